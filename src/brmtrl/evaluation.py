"""The reported metrics: honest clients' test results summed up, the same for every engine.

Two protocols (``eval.protocol``): ``brmtrl`` (ours) is the unweighted mean over honest clients of
each client's accuracy with the head it holds; ``fedrep`` follows FedRep's code, a mean weighted by
each client's test-set size (the engine refits heads on the current φ first). Clients with no test
samples are not scored under either; ``clients_scored`` says how many were.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .client import EvalResult

__all__ = ["summarize"]


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
    if classification:
        acc = np.array([r.accuracy for r in scored])
        mean = float(w @ acc)
        out.update(honest_acc_mean=mean, honest_acc_std=float(np.sqrt(w @ (acc - mean) ** 2)),
                   honest_acc_min=float(acc.min()))
    return out
