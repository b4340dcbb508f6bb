"""The one-dimensional search of the attacks that know the defense (:mod:`brmtrl.attacks.adaptive`).

An adaptive attack has one scale (ALIE's τ, IPM's ε, min-max's γ) and an objective: how far the server's
aggregate lands from the honest mean when the Byzantine clients send the attack at that scale. The
search follows ByzFL's Opt-ALIE / Opt-IPM (Allouah et al., AISTATS 2023): an expansion phase that doubles
the step while the objective grows, then a contraction phase that shrinks it by ``ratio``; it is
derivative-free and costs ``evals`` evaluations of the server's rule. Unlike ByzFL's, the contraction
tries both sides of the best point, and the search starts from the blind attack's own scale, so the
tailored attack is never weaker than the blind one on the same round.
"""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["line_search"]


def line_search(objective: Callable[[float], float], *, start: float, delta: float, evals: int = 20,
                ratio: float = 0.8, lower: float = -math.inf) -> tuple[float, float]:
    """Maximise ``objective`` over scales >= ``lower``, starting at ``start`` with step ``delta`` (> 0), in
    at most ``evals`` evaluations. Returns the best scale found and its objective (ties keep the earlier
    point; a NaN objective counts as -inf)."""
    if not delta > 0 or not math.isfinite(delta):
        raise ValueError(f"line_search: delta must be a positive finite number. Got {delta!r} instead.")
    if evals < 1:
        raise ValueError(f"line_search: evals must be >= 1. Got {evals!r} instead.")
    if not 0 < ratio < 1:
        raise ValueError(f"line_search: ratio must be in (0, 1). Got {ratio!r} instead.")

    def value(x: float) -> float:
        y = float(objective(x))
        return y if math.isfinite(y) else -math.inf

    best_x, best_y = start, value(start)
    left = evals - 1
    while left > 0:                                      # expansion: double the step while it pays
        y = value(best_x + delta)
        left -= 1
        if y > best_y:
            best_x, best_y = best_x + delta, y
            delta *= 2
        else:
            delta *= ratio
            break
    while left > 0:                                      # contraction: both sides, shrinking steps
        for x in (best_x + delta, best_x - delta):
            if left == 0 or x < lower:
                continue
            y = value(x)
            left -= 1
            if y > best_y:
                best_x, best_y = x, y
                break
        delta *= ratio
    return best_x, best_y
