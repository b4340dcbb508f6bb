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

How long and how fast each method trains is chosen per new client and k, never on test data
(``transfer.select = 'validation'``, the default): one sample per class of the k shots is held out, each
(epochs, lr) of ``transfer.epochs_grid`` × ``transfer.lr_grid`` is fitted on the rest and scored on it,
and the best (highest validation accuracy, then lowest loss, then the earlier in the grid) is refitted on
all k shots. With k = 1 nothing can be held out: the fixed settings apply, as with ``transfer.select =
'fixed'`` (``transfer.epochs``, ``transfer.scratch_epochs``, ``train.lr``; the behaviour before
2026-12-02). ``results.json`` lists the choices (``selected``).

No augmentation. ``results.json`` gets a ``transfer`` section: per method and k, the mean, standard
deviation and minimum of the new clients' accuracies; the run also writes ``transfer.png``.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .client import Data, EvalResult, client_generator, evaluate_client, fine_tune_and_evaluate, fit_heads
from .config import ConfigError

__all__ = ["METHODS", "few_shot_sample", "fedavg_weights", "select_on_validation", "shot_stats", "transfer_study",
           "validation_split"]

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


def validation_split(data: Data) -> tuple[Data, Data] | None:
    """The k shots split into a fitting part and a validation part of one sample per class (the last of
    each class in :func:`few_shot_sample`'s order); None when a class has a single sample (k = 1)."""
    x, y = data
    val = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        if len(idx) < 2:
            return None
        val.append(int(idx[-1]))
    mask = torch.ones(len(y), dtype=torch.bool, device=y.device)
    mask[torch.as_tensor(val, device=y.device)] = False
    return (x[mask], y[mask]), (x[~mask], y[~mask])


def select_on_validation(fit_and_score: Callable[[Data, Data, int, float], EvalResult], data: Data,
                         epochs_grid: Sequence[int], lr_grid: Sequence[float]) -> tuple[int, float] | None:
    """The (epochs, lr) of the grid whose fit on the fitting part of ``data`` scores best on its validation
    part (:func:`validation_split`): highest accuracy, then lowest loss, then the first in the grid's order.
    None when ``data`` cannot be split."""
    split = validation_split(data)
    if split is None:
        return None
    fit, val = split
    best, key = None, None
    for epochs, lr in itertools.product(epochs_grid, lr_grid):
        res = fit_and_score(fit, val, epochs, lr)
        k = (res.accuracy, -res.loss)
        if key is None or k > key:
            best, key = (int(epochs), float(lr)), k
    return best


def shot_stats(accs: Sequence[float]) -> dict[str, Any]:
    """Mean, standard deviation and minimum over the new clients (clients without test data left out)."""
    a = np.asarray([v for v in accs if np.isfinite(v)], dtype=np.float64)
    if not len(a):
        return {"mean": None, "std": None, "min": None, "clients": 0}
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "clients": int(len(a))}


def fedavg_weights(cfg: Mapping[str, Any], size: int, data_fingerprint: str | None = None) -> torch.Tensor | None:
    """FedAvg's final global model from ``transfer.fedavg_run`` (None when the key is empty). The run
    must be a finished FedAvg run on the same model, the same held-out clients and the same data and
    partition (``data_fingerprint``, :meth:`brmtrl.data.FederatedData.fingerprint`)."""
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
    if int(state.get("round", 0)) < int(state.get("rounds", 0)):
        raise ConfigError(f"config key 'transfer.fedavg_run' = {where!r} stopped at round {state.get('round')} of "
                          f"{state.get('rounds')}; finish it first")
    if data_fingerprint is not None and state.get("data_fingerprint") != data_fingerprint:
        raise ConfigError(f"config key 'transfer.fedavg_run' = {where!r} was trained on other data or another "
                          "partition (its data fingerprint differs from this run's)")
    weights = state["shared"]
    if weights.numel() != size:
        raise ConfigError(f"config key 'transfer.fedavg_run' = {where!r}: its model has {weights.numel()} parameters, "
                          f"this run's has {size}")
    return weights


def transfer_study(cfg: Mapping[str, Any], model: Any, rule: Any, sgd: Any, *, shared: torch.Tensor,
                   initial_head: torch.Tensor, initial_all: torch.Tensor,
                   clients: Sequence[tuple[int, Data, Data]], data_fingerprint: str | None = None) -> dict[str, Any]:
    """Run the few-shot study of :mod:`brmtrl.transfer` on a run's final state, from either engine.

    ``model``: the run's model (overwritten while the study runs; left holding ``shared``); ``rule``: its
    local rule (:class:`brmtrl.local_update.LocalRule`: which part is shared); ``sgd``: the SGD settings;
    ``shared``: the run's final shared vector (φ, or the whole model for FedAvg); ``initial_head`` and
    ``initial_all``: the model's initial last layer and whole vector; ``clients``: each new client's id,
    training data and test data; ``data_fingerprint``: this run's data and partition, which
    ``transfer.fedavg_run`` must share."""
    from .split import set_flat

    shots: list[int] = list(cfg["transfer.shots"])
    size = sum(p.numel() for p in model.parameters())
    fedavg = shared if rule.shared == "all" else fedavg_weights(cfg, size, data_fingerprint)
    if fedavg is not None:
        fedavg = fedavg.to(shared.device)
    fixed = {"representation": cfg["transfer.epochs"], "fedavg_finetuned": cfg["transfer.epochs"],
             "scratch": cfg["transfer.scratch_epochs"]}

    def fitter(method: str, gen: Callable[[], torch.Generator]) -> Callable[[Data, Data, int, float], EvalResult]:
        def fit_and_score(train: Data, test: Data, epochs: int, lr: float) -> EvalResult:
            opt = dataclasses.replace(sgd, lr=lr)
            if method == "representation":
                head = fit_heads(model, shared, initial_head.unsqueeze(0), [train], epochs, opt, [gen()])[0]
                return evaluate_client(model, rule, shared, head.to(initial_head.dtype), test)
            weights, part = (fedavg, cfg["finetune.part"]) if method == "fedavg_finetuned" else (initial_all, "all")
            return fine_tune_and_evaluate(model, weights, train, test, part, epochs, opt, gen())
        return fit_and_score

    wanted = [m for m in METHODS if (m != "representation" or rule.shared == "rep")
              and (m != "fedavg_finetuned" or fedavg is not None)]
    accs: dict[str, dict[int, list[float]]] = {m: {k: [] for k in shots} for m in METHODS}
    chosen: dict[str, dict[int, list[list[float]]]] = {m: {k: [] for k in shots} for m in wanted}
    for c, train_data, test in clients:
        if not len(test[1]):
            continue
        for k in shots:
            train = few_shot_sample(train_data, k, client_generator(cfg["seed"], k, c, stream=6))
            gen = lambda: client_generator(cfg["seed"], k, c, stream=3)  # noqa: E731 - same draws per method
            for m in wanted:
                fit_and_score = fitter(m, gen)
                pick = select_on_validation(fit_and_score, train, cfg["transfer.epochs_grid"], cfg["transfer.lr_grid"]) \
                    if cfg["transfer.select"] == "validation" else None
                epochs, lr = pick if pick is not None else (fixed[m], sgd.lr)
                chosen[m][k].append([epochs, lr])
                accs[m][k].append(fit_and_score(train, test, epochs, lr).accuracy)
    if rule.shared != "none":   # leave the model holding the run's shared part
        set_flat(model, rule.shared, shared)
    methods = {m: {str(k): shot_stats(v) for k, v in per_k.items()} for m, per_k in accs.items()
               if any(per_k.values())}
    return {"shots": shots, "clients": [c for c, _, _ in clients], "select": cfg["transfer.select"],
            "epochs": cfg["transfer.epochs"], "scratch_epochs": cfg["transfer.scratch_epochs"],
            "selected": {m: {str(k): v for k, v in per_k.items()} for m, per_k in chosen.items()},
            "fedavg_source": ("this run" if rule.shared == "all" else (cfg["transfer.fedavg_run"] or None)),
            "methods": methods}
