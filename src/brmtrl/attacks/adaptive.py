"""Attacks that know the defense: omniscient attacks whose scale is tuned, every round, against the
server's actual aggregation (its declared rule, pre-aggregation steps and f).

Each takes, besides the usual ``byzantine`` (b, d) and ``honest`` (h, d) rows, ``aggregate``: a function
that returns what the server would output if the Byzantine clients sent the given rows (b, d) in this
round, every other row as sent (the simulated adversary builds it from the server's published settings:
:mod:`brmtrl.adversary`). The scale maximises the deviation of that aggregate from the honest mean,

    D(s) = ‖ aggregate(rows(s)) − μ ‖₂,

by the derivative-free search of :func:`brmtrl.attacks.search.line_search` (``evals`` evaluations of the
rule; it starts from the blind attack's own scale, so the tailored attack deviates at least as far as the
blind one on the same round). Notation as in :mod:`brmtrl.attacks.omniscient`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .omniscient import _copies, _stats, alie_z, min_max, min_max_sum_point, min_sum
from .search import line_search

__all__ = ["Aggregate", "deviation", "min_max_adaptive", "min_sum_adaptive", "opt_alie", "opt_ipm", "tailored_gamma"]

#: the server's aggregate of the round as a function of the Byzantine rows (b, d) -> (d,)
Aggregate = Callable[[torch.Tensor], torch.Tensor]


def deviation(aggregate: Aggregate, byzantine: torch.Tensor, mu: torch.Tensor) -> Callable[[torch.Tensor], float]:
    """D(v) = ‖aggregate(b copies of v) − μ‖₂, the objective of every tailored attack."""
    def objective(v: torch.Tensor) -> float:
        point = aggregate(_copies(v, byzantine)).to(torch.float64)
        return float(torch.linalg.vector_norm(point - mu.to(point.device)))

    return objective


def opt_alie(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator, aggregate: Aggregate,
             evals: int = 20) -> torch.Tensor:
    """Opt-ALIE (ByzFL; Allouah et al., "Fixing by Mixing", AISTATS 2023): every Byzantine client sends

        μ + τ* σ,   τ* = argmax_τ ‖aggregate(μ + τσ) − μ‖₂,

    ALIE (:func:`brmtrl.attacks.alie`) with its factor searched against the deployed rule instead of the
    paper's z_max (the search starts at ALIE's −z_max with step 1 and may end at either sign)."""
    if honest.shape[0] == 0:
        return byzantine
    _, mu, sigma = _stats(honest)
    n, b = byzantine.shape[0] + honest.shape[0], byzantine.shape[0]
    objective = deviation(aggregate, byzantine, mu)
    tau, _ = line_search(lambda t: objective(mu + t * sigma), start=-max(alie_z(n, b), 0.0), delta=1.0, evals=evals)
    return _copies(mu + tau * sigma, byzantine)


def opt_ipm(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator, aggregate: Aggregate,
            evals: int = 20, epsilon: float = 0.1) -> torch.Tensor:
    """Opt-IPM (ByzFL; Allouah et al., AISTATS 2023): every Byzantine client sends

        −ε* μ,   ε* = argmax_{ε >= 0} ‖aggregate(−εμ) − μ‖₂,

    inner-product manipulation (:func:`brmtrl.attacks.ipm`) with ε searched against the deployed rule,
    starting from the blind attack's ε (``attack.epsilon``) with step max(ε, 0.1)."""
    if honest.shape[0] == 0:
        return byzantine
    _, mu, _ = _stats(honest)
    objective = deviation(aggregate, byzantine, mu)
    eps, _ = line_search(lambda e: objective(-e * mu), start=epsilon, delta=max(epsilon, 0.1), evals=evals, lower=0.0)
    return _copies(-eps * mu, byzantine)


def tailored_gamma(aggregate: Aggregate, byzantine: torch.Tensor, mu: torch.Tensor, p: torch.Tensor, gamma: float,
                   evals: int) -> float:
    """The AGR-tailored γ of min-max / min-sum (Shejwalkar & Houmansadr, NDSS 2021, §IV-B): the γ >= 0 that
    maximises ‖aggregate(μ + γ∇p) − μ‖₂, searched from the blind attack's γ (step max(γ/2, 1e-3))."""
    objective = deviation(aggregate, byzantine, mu)
    best, _ = line_search(lambda g: objective(mu + g * p), start=gamma, delta=max(gamma / 2, 1e-3), evals=evals,
                          lower=0.0)
    return best


def _check_tailored(name: str, tailored: bool, aggregate: Aggregate | None) -> None:
    if tailored and aggregate is None:
        raise ValueError(f"{name}: tailored = True needs the server's aggregate (the simulated adversary passes it)")


def min_max_adaptive(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
                     perturbation: str = "std", tailored: bool = False, aggregate: Aggregate | None = None,
                     evals: int = 20) -> torch.Tensor:
    """Min-Max (:func:`brmtrl.attacks.min_max`); ``tailored = True`` (``attack.tailored``) replaces its
    stealth bound by the AGR-tailored γ (:func:`tailored_gamma`) against the deployed rule."""
    _check_tailored("min_max", tailored, aggregate)
    if not tailored or honest.shape[0] == 0:
        return min_max(byzantine, honest, generator=generator, perturbation=perturbation)
    mu, p, gamma = min_max_sum_point(honest, perturbation, use_sum=False)
    assert aggregate is not None
    return _copies(mu + tailored_gamma(aggregate, byzantine, mu, p, gamma, evals) * p, byzantine)


def min_sum_adaptive(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
                     perturbation: str = "std", bound: str = "max", tailored: bool = False,
                     aggregate: Aggregate | None = None, evals: int = 20) -> torch.Tensor:
    """Min-Sum (:func:`brmtrl.attacks.min_sum`); ``tailored = True`` as for :func:`min_max_adaptive`, the
    search starting from min-sum's γ."""
    _check_tailored("min_sum", tailored, aggregate)
    if not tailored or honest.shape[0] == 0:
        return min_sum(byzantine, honest, generator=generator, perturbation=perturbation, bound=bound)
    mu, p, gamma = min_max_sum_point(honest, perturbation, use_sum=True, bound=bound)
    assert aggregate is not None
    return _copies(mu + tailored_gamma(aggregate, byzantine, mu, p, gamma, evals) * p, byzantine)
