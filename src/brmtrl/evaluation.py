"""Scoring clients: the one implementation both engines call, and the metrics summed up from it.

:func:`score_clients` scores clients under ``eval.protocol`` (the built-in engine for every honest client
at once, a Flower node for itself); :func:`transfer_scores` scores new clients that fit a fresh head on a
few of their samples. :func:`summarize` turns the per-client results into the reported metrics.

Two protocols (``eval.protocol``): ``brmtrl`` (ours) is the unweighted mean over honest clients of
each client's accuracy with the head it holds; ``fedrep`` follows FedRep's code, a mean weighted by
each client's test-set size (the engine refits heads on the current φ first). Clients with no test
samples are not scored under either; ``clients_scored`` says how many were.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .client import (Data, EvalResult, client_generator, evaluate_client, fine_tune_and_evaluate, fit_heads,
                     transfer_sample)
from .guard import Guard
from .local_update import Augment, LocalRule, SGDSettings
from .models import SplitModel
from .split import set_flat

__all__ = ["score_clients", "summarize", "transfer_scores"]


def score_clients(cfg: Mapping[str, Any], model: SplitModel, rule: LocalRule, sgd: SGDSettings, shared: torch.Tensor,
                  privates: torch.Tensor, clients: Sequence[int], train: Sequence[Data], test: Sequence[Data],
                  round_: int, *, augment: Augment | None = None,
                  test_features: Sequence[torch.Tensor] | None = None,
                  guard: Guard | None = None, guard_states: Sequence[torch.Tensor] | None = None,
                  validation: Sequence[Data] | None = None) -> list[EvalResult]:
    """Each of ``clients`` scored on its ``test`` data under the config's protocol, with the model it holds
    (``shared`` and its row of ``privates``):

    * ``fedavg_ft``: a copy of the global model fine-tuned on the client's ``train`` data (``finetune.part``
      for ``finetune.epochs``, augmented as in training; stream 5), then scored;
    * ``eval.protocol = 'fedrep'`` with a private head: the head is first refitted on ``shared``
      (``train.head_epochs`` on the client's ``train`` data; stream 4), for scoring only;
    * otherwise the client's own private part as it is.

    ``test_features``: φ of each client's test inputs, when already computed. ``model`` is overwritten.
    The built-in engine calls it for all honest clients at once, a Flower node for itself; the refit of
    several heads runs together and equals one at a time.

    With a ``guard`` (:mod:`brmtrl.guard`), each client is scored with the better, on its ``validation``
    part, of that model and its personal model (its row of ``guard_states``); the choice never reads
    ``test``."""
    seed = cfg["seed"]
    if rule.name == "fedavg_ft":
        out = [fine_tune_and_evaluate(model, shared, tr, te, cfg["finetune.part"], cfg["finetune.epochs"], sgd,
                                      client_generator(seed, round_, c, stream=5), augment)
               for c, tr, te in zip(clients, train, test)]
        set_flat(model, "all", shared)
        return out
    if cfg["eval.protocol"] == "fedrep" and rule.private == "head" and cfg["train.head_epochs"] > 0:
        active = [i for i, (_, y) in enumerate(train) if len(y)]
        if active:
            gens = [client_generator(seed, round_, clients[i], stream=4) for i in active]
            privates = privates.clone()
            privates[active] = fit_heads(model, shared, privates[active], [train[i] for i in active],
                                         cfg["train.head_epochs"], sgd, gens).to(privates.dtype)
    if guard is not None and (guard_states is None or validation is None):
        raise ValueError("score_clients: a guard needs the clients' guard_states and validation parts")
    out = []
    with torch.no_grad():
        for i, (private, te) in enumerate(zip(privates, test)):
            personal = None if guard is None else \
                guard.use_personal(model, shared, private, guard_states[i], validation[i])  # type: ignore[index]
            mine = guard.personal(guard_states[i]) if guard is not None and personal else None  # type: ignore[index]
            if mine is not None:
                res = evaluate_client(model, rule, mine[0].to(shared.dtype), mine[1].to(private.dtype), te)
            else:
                res = evaluate_client(model, rule, shared, private, te,
                                      features=None if test_features is None else test_features[i])
            out.append(dataclasses.replace(res, personal=personal))
    return out


def transfer_scores(cfg: Mapping[str, Any], model: SplitModel, rule: LocalRule, sgd: SGDSettings,
                    shared: torch.Tensor, fresh: torch.Tensor, clients: Sequence[int], train: Sequence[Data],
                    test: Sequence[Data], round_: int, *,
                    test_features: Sequence[torch.Tensor] | None = None) -> list[EvalResult]:
    """New clients (never trained on) scored after each fits the ``fresh`` head on ``transfer.samples`` of
    its ``train`` samples for ``transfer.epochs``, with φ = ``shared`` frozen (stream 3 draws the samples
    and the batches)."""
    gens = [client_generator(cfg["seed"], round_, c, stream=3) for c in clients]
    data = [transfer_sample(tr, cfg["transfer.samples"], g) for tr, g in zip(train, gens)]
    heads = fit_heads(model, shared, fresh.unsqueeze(0).repeat(len(clients), 1), data, cfg["transfer.epochs"],
                      sgd, gens)
    with torch.no_grad():
        return [evaluate_client(model, rule, shared, h, te,
                                features=None if test_features is None else test_features[i])
                for i, (h, te) in enumerate(zip(heads, test))]


def summarize(results: Sequence[EvalResult], *, weighted: bool = False,
              classification: bool = True) -> dict[str, Any]:
    """``honest_acc_mean`` / ``_std`` / ``_min``, ``honest_loss_mean`` and ``clients_scored`` over
    the clients that have test samples; accuracies are None for regression tasks and when no client
    could be scored."""
    scored = [r for r in results if r.num_samples > 0]
    out: dict[str, Any] = {"honest_acc_mean": None, "honest_acc_std": None, "honest_acc_min": None,
                           "honest_loss_mean": None, "clients_scored": len(scored)}
    if not scored:
        return out
    w = np.array([r.num_samples for r in scored], dtype=np.float64) if weighted else np.ones(len(scored))
    w = w / w.sum()
    loss = np.array([r.loss for r in scored])
    out["honest_loss_mean"] = float(w @ loss)
    if any(r.personal is not None for r in scored):
        out["guard_personal_share"] = float(np.mean([bool(r.personal) for r in scored]))
    if classification:
        acc = np.array([r.accuracy for r in scored])
        mean = float(w @ acc)
        out.update(honest_acc_mean=mean, honest_acc_std=float(np.sqrt(w @ (acc - mean) ** 2)),
                   honest_acc_min=float(acc.min()))
    return out
