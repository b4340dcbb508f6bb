"""Scoring clients: the one implementation both engines call, and the metrics summed up from it.

:func:`score_clients` scores clients under ``eval.protocol`` (the built-in engine for every honest client
at once, a Flower node for itself); :func:`transfer_scores` scores new clients that fit a fresh head on a
few of their samples. :func:`summarize` turns the per-client results into the reported metrics.

Two protocols (``eval.protocol``): ``brmtrl`` (ours) is the unweighted mean over honest clients of
each client's accuracy with the head it holds; ``fedrep`` follows FedRep's code (``main_fedrep.py``), a
mean weighted by each client's test-set size after FedRep's final round (:func:`final_round`): every
client, sampled or not, trains the parameters that are local for its algorithm on the final global ones.
Clients with no test samples are not scored under either; ``clients_scored`` says how many were.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .client import (Data, EvalResult, client_generator, evaluate_client, fine_tune_and_evaluate, fit_heads,
                     transfer_sample)
from .guard import Guard
from .local_update import Augment, LocalRule, SGDSettings, evaluate, train_phases
from .models import SplitModel
from .split import Part, set_flat

__all__ = ["client_scores", "final_round", "mean_over", "score_clients", "summarize", "transfer_scores"]

#: the epochs of FedRep's final round at least (``max(10, local_ep - local_rep_ep)``; 10 for FedAvg)
FINAL_ROUND_EPOCHS = 10


def final_round(cfg: Mapping[str, Any], rule: LocalRule) -> tuple[Part, int] | None:
    """What a client trains in FedRep's final round under ``eval.protocol = 'fedrep'``, and for how many
    epochs, as FedRep's ``LocalUpdate.train(last=True)`` does it: the parameters that are local for the
    algorithm, with the global ones frozen, for ``max(10, budget - train.rep_epochs)`` epochs (``budget``:
    the rule's epochs per round): the head for BR-MTRL, FedRep and FedPer, the lower layers for
    LG-FedAvg, the whole model for Local-only; FedAvg's clients fine-tune the head of the global model for
    10 epochs. None for ``fedavg_ft``, which fine-tunes as ``finetune.*`` says, and without the protocol."""
    if cfg["eval.protocol"] != "fedrep" or rule.name == "fedavg_ft":
        return None
    if rule.private == "none":
        return "head", FINAL_ROUND_EPOCHS
    budget = sum(e for _, e in rule.phases(cfg))
    return rule.private, max(FINAL_ROUND_EPOCHS, budget - int(cfg["train.rep_epochs"]))


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
    * ``eval.protocol = 'fedrep'``: FedRep's final round first (:func:`final_round`; stream 4), for scoring
      only: a private head is refitted on ``shared`` at every evaluation (cheap, batched); the other parts
      (LG-FedAvg's lower layers, Local-only's model, FedAvg's head) are trained once, at the run's last
      round (``round_ >= train.rounds``), one client at a time, augmented as in training, and earlier
      evaluations score them as held;
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
    last = final_round(cfg, rule)
    if last is not None and last[0] == rule.private == "head":   # heads: refitted at every evaluation, batched
        active = [i for i, (_, y) in enumerate(train) if len(y)]
        if active:
            gens = [client_generator(seed, round_, clients[i], stream=4) for i in active]
            privates = privates.clone()
            privates[active] = fit_heads(model, shared, privates[active], [train[i] for i in active],
                                         last[1], sgd, gens).to(privates.dtype)
    elif last is not None and round_ >= cfg["train.rounds"]:   # the other parts: once, at the last round
        held: Sequence[torch.Tensor | None] = privates if rule.private != "none" else [None] * len(clients)
        return [_final_round_score(model, rule, shared, p, tr, te, last, sgd,
                                   client_generator(seed, round_, c, stream=4), augment)
                for c, p, tr, te in zip(clients, held, train, test)]
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


def _final_round_score(model: SplitModel, rule: LocalRule, shared: torch.Tensor, private: torch.Tensor | None,
                       train: Data, test: Data, last: tuple[Part, int], sgd: SGDSettings,
                       generator: torch.Generator, augment: Augment | None) -> EvalResult:
    """One client's FedRep final round (``last``: the part and epochs) from the model it holds, then its
    score on ``test``; ``model`` is overwritten."""
    x, y = test
    if len(y) == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    set_flat(model, rule.shared, shared)
    if private is not None:
        set_flat(model, rule.private, private)
    train_phases(model, train[0], train[1], [last], sgd, generator, augment)
    model.eval()
    with torch.no_grad():
        acc, loss = evaluate(model, x, y)
    return EvalResult(acc, loss, len(y))


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


def client_scores(clients: Sequence[Any], results: Sequence[EvalResult]) -> dict[str, list[Any]]:
    """Each scored client's accuracy and test-set size (``results.json`` ``final.client_scores``), so that a
    run can be compared with a reference on the same clients (:func:`mean_over`)."""
    kept = [(c, r) for c, r in zip(clients, results) if r.num_samples > 0]
    return {"clients": [c for c, _ in kept],
            "accuracy": [None if np.isnan(r.accuracy) else float(r.accuracy) for _, r in kept],   # None: regression
            "test_samples": [int(r.num_samples) for _, r in kept]}


def mean_over(scores: Mapping[str, Sequence[Any]], clients: Any, *, weighted: bool = False) -> float | None:
    """The mean accuracy of :func:`client_scores` over the clients in ``clients`` only (weighted by test-set
    size with ``weighted``, FedRep's protocol): a reference scored on another run's honest clients. None
    when none of them was scored."""
    keep = set(clients)
    rows = [(a, n) for c, a, n in zip(scores["clients"], scores["accuracy"], scores["test_samples"])
            if c in keep and a is not None]
    if not rows:
        return None
    w = np.array([n if weighted else 1.0 for _, n in rows], dtype=np.float64)
    return float(w @ np.array([a for a, _ in rows]) / w.sum())


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
