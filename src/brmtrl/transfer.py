"""Transfer to new clients: does the learned representation help a client that never took part?

Held-out clients (``transfer.clients``; never sampled, never Byzantine) arrive after training. For each k
in ``transfer.shots`` each draws k labelled samples per class of its own classes from its training data
and, on exactly those samples, three models are fitted and scored on its own test data:

* ``representation``: a fresh head (the model's initial last layer) fitted for ``transfer.epochs`` on the
  run's final φ, frozen (rules that share φ: brmtrl, fedrep, fedper);
* ``fedavg_finetuned``: FedAvg's global model fine-tuned (``finetune.part``) for ``transfer.epochs``; the
  run's own model when the run is FedAvg, else the final model of the FedAvg run in
  ``transfer.fedavg_run`` (same dataset, model, seed and held-out clients);
* ``scratch``: the same network from its initial weights, all of it trained for ``transfer.scratch_epochs``.

No augmentation. ``results.json`` gets a ``transfer`` section: per method and k, the mean, standard
deviation and minimum of the new clients' accuracies; the run also writes ``transfer.png``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .client import Data, client_generator, evaluate_client, fine_tune_and_evaluate, fit_heads
from .config import ConfigError

__all__ = ["METHODS", "few_shot_sample", "fedavg_weights", "shot_stats", "transfer_study"]

#: the methods compared, in the order the results and the plot list them
METHODS = ("representation", "fedavg_finetuned", "scratch")


def few_shot_sample(data: Data, k: int, generator: torch.Generator) -> Data:
    """k samples of each class present in ``data`` (all of a class's samples if it has fewer), drawn
    with ``generator``, in class order."""
    x, y = data
    keep = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        perm = torch.randperm(len(idx), generator=generator).to(idx.device)
        keep.append(idx[perm[:k]])
    sel = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long, device=y.device)
    return x[sel], y[sel]


def shot_stats(accs: Sequence[float]) -> dict[str, Any]:
    """Mean, standard deviation and minimum over the new clients (clients without test data left out)."""
    a = np.asarray([v for v in accs if np.isfinite(v)], dtype=np.float64)
    if not len(a):
        return {"mean": None, "std": None, "min": None, "clients": 0}
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "clients": int(len(a))}


def fedavg_weights(cfg: Mapping[str, Any], size: int) -> torch.Tensor | None:
    """FedAvg's final global model from ``transfer.fedavg_run`` (None when the key is empty). The run
    must be a finished FedAvg run on the same dataset and model with the same held-out clients."""
    from .checkpoint import CheckpointError, load_checkpoint

    where = cfg["transfer.fedavg_run"]
    if not where:
        return None
    try:
        state = load_checkpoint(where)
    except CheckpointError as exc:
        raise ConfigError(f"config key 'transfer.fedavg_run' = {where!r}: {exc}") from None
    saved = state.get("config", {})
    if saved.get("algorithm.name") not in ("fedavg", "fedavg_ft"):
        raise ConfigError(f"config key 'transfer.fedavg_run' = {where!r} is a {saved.get('algorithm.name')!r} run; "
                          "a fedavg or fedavg_ft run is expected")
    for key in ("dataset.name", "dataset.num_clients", "model.name", "seed", "transfer.clients"):
        if saved.get(key) != cfg[key]:
            raise ConfigError(f"config key 'transfer.fedavg_run' = {where!r} was run with {key} = {saved.get(key)!r}, "
                              f"this run has {cfg[key]!r}; the new clients must be the same and never trained on")
    weights = state["shared"]
    if weights.numel() != size:
        raise ConfigError(f"config key 'transfer.fedavg_run' = {where!r}: its model has {weights.numel()} parameters, "
                          f"this run's has {size}")
    return weights


def transfer_study(cfg: Mapping[str, Any], model: Any, rule: Any, sgd: Any, *, shared: torch.Tensor,
                   initial_head: torch.Tensor, initial_all: torch.Tensor,
                   clients: Sequence[tuple[int, Data, Data]]) -> dict[str, Any]:
    """Run the few-shot study of :mod:`brmtrl.transfer` on a run's final state, from either engine.

    ``model``: the run's model (overwritten while the study runs; left holding ``shared``); ``rule``: its
    local rule (:class:`brmtrl.local_update.LocalRule`: which part is shared); ``sgd``: the SGD settings;
    ``shared``: the run's final shared vector (φ, or the whole model for FedAvg); ``initial_head`` and
    ``initial_all``: the model's initial last layer and whole vector; ``clients``: each new client's id,
    training data and test data."""
    from .split import set_flat

    shots: list[int] = list(cfg["transfer.shots"])
    size = sum(p.numel() for p in model.parameters())
    fedavg = shared if rule.shared == "all" else fedavg_weights(cfg, size)
    if fedavg is not None:
        fedavg = fedavg.to(shared.device)
    accs: dict[str, dict[int, list[float]]] = {m: {k: [] for k in shots} for m in METHODS}
    for c, train_data, test in clients:
        if not len(test[1]):
            continue
        for k in shots:
            train = few_shot_sample(train_data, k, client_generator(cfg["seed"], k, c, stream=6))
            gen = lambda: client_generator(cfg["seed"], k, c, stream=3)  # noqa: E731 - same draws per method
            if rule.shared == "rep":
                head = fit_heads(model, shared, initial_head.unsqueeze(0), [train], cfg["transfer.epochs"],
                                 sgd, [gen()])[0]
                accs["representation"][k].append(
                    evaluate_client(model, rule, shared, head.to(initial_head.dtype), test).accuracy)
            if fedavg is not None:
                accs["fedavg_finetuned"][k].append(fine_tune_and_evaluate(
                    model, fedavg, train, test, cfg["finetune.part"], cfg["transfer.epochs"], sgd, gen()).accuracy)
            accs["scratch"][k].append(fine_tune_and_evaluate(
                model, initial_all, train, test, "all", cfg["transfer.scratch_epochs"], sgd, gen()).accuracy)
    if rule.shared != "none":   # leave the model holding the run's shared part
        set_flat(model, rule.shared, shared)
    methods = {m: {str(k): shot_stats(v) for k, v in per_k.items()} for m, per_k in accs.items()
               if any(per_k.values())}
    return {"shots": shots, "clients": [c for c, _, _ in clients], "epochs": cfg["transfer.epochs"],
            "scratch_epochs": cfg["transfer.scratch_epochs"],
            "fedavg_source": ("this run" if rule.shared == "all" else (cfg["transfer.fedavg_run"] or None)),
            "methods": methods}
