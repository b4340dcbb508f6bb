"""Omniscient attacks: the Byzantine clients see the honest φ deltas of the round (``honest``, (h, d))
and craft what they send from them. A real Byzantine node cannot see other nodes' updates, so these
run inside the server step, in simulation only (:func:`brmtrl.attacks.server_attack`).

Notation: h honest rows x_1..x_h, b Byzantine rows, n = h + b; μ and σ the coordinate-wise mean and
standard deviation of the honest rows. Every attack returns b rows in the input's dtype; the crafted
rows are computed in float64. With no honest row there is nothing to see: the Byzantine rows are sent
as computed.
"""

from __future__ import annotations

import math
import warnings
from statistics import NormalDist

import torch

from ..aggregators.gram import pairwise_sq_distances

__all__ = ["alie", "alie_z", "fang", "ipm", "mimic", "min_max", "min_max_sum_point", "min_sum", "perturbation_direction"]

PERTURBATIONS = ("std", "sign", "unit")


def _stats(honest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The honest rows in float64, their mean μ and their standard deviation σ (0 for one row)."""
    x = honest.to(torch.float64)
    mu = x.mean(dim=0)
    sigma = x.std(dim=0, correction=1) if x.shape[0] > 1 else torch.zeros_like(mu)
    return x, mu, sigma


def _copies(v: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
    return v.to(byzantine.dtype).unsqueeze(0).expand_as(byzantine).clone()


def alie_z(n: int, b: int) -> float:
    """ALIE's z_max (Baruch, Baruch & Goldberg 2019): with s = ⌊n/2 + 1⌋ − b the supporters needed
    for a majority, z_max = Φ⁻¹((n − s)/n), Φ the standard normal CDF."""
    s = math.floor(n / 2 + 1) - b
    p = min(max((n - s) / n, 1e-12), 1 - 1e-12)
    return NormalDist().inv_cdf(p)


def alie(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
         z: float | None = None, direction: str = "down") -> torch.Tensor:
    """A Little Is Enough (Baruch, Baruch & Goldberg, NeurIPS 2019): every Byzantine client sends

        μ − z · σ   (coordinate-wise; ``direction = "up"``: μ + z · σ),

    small enough per coordinate to pass for an honest value, consistent enough across coordinates to
    move the aggregate. ``z = None`` takes the paper's z_max for the round's n and b (:func:`alie_z`);
    an explicit z must be > 0. z_max is 0 when n is even and b = 1 (the attack then sends μ, a no-op):
    a warning says so. The paper's attackers estimate μ, σ from their own updates, here (as in Allouah
    et al. 2023) from the honest ones."""
    if direction not in ("down", "up"):
        raise ValueError(f"alie: direction must be 'down' or 'up'; got {direction!r}")
    if z is not None and not z > 0:
        raise ValueError(f"alie: z must be > 0 (or None for the paper's z_max); got {z!r}")
    if honest.shape[0] == 0:
        return byzantine
    _, mu, sigma = _stats(honest)
    n, b = byzantine.shape[0] + honest.shape[0], byzantine.shape[0]
    zz = alie_z(n, b) if z is None else z
    if zz <= 0:
        warnings.warn(f"alie: z_max = {zz:.3g} for n = {n} rows with b = {b} Byzantine: the attack sends the honest "
                      "mean (a no-op); set attack.z > 0 for a real attack", RuntimeWarning, stacklevel=2)
    sign = -1.0 if direction == "down" else 1.0
    return _copies(mu + sign * zz * sigma, byzantine)


def ipm(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
        epsilon: float = 0.1) -> torch.Tensor:
    """Inner-product manipulation (Xie, Koyejo & Gupta, UAI 2020): every Byzantine client sends

        −ε · μ,

    so that the aggregate's inner product with the true mean turns negative; ε = 0.1 fools the rules
    that keep a point near the honest majority, ε = 100 the others."""
    if honest.shape[0] == 0:
        return byzantine
    _, mu, _ = _stats(honest)
    return _copies(-epsilon * mu, byzantine)


def perturbation_direction(mu: torch.Tensor, sigma: torch.Tensor, kind: str) -> torch.Tensor:
    """Shejwalkar & Houmansadr's perturbation ∇p: ``std`` −σ, ``sign`` −sign(μ), ``unit`` −μ/‖μ‖."""
    if kind == "std":
        return -sigma
    if kind == "sign":
        return -torch.sign(mu)
    if kind == "unit":
        norm = torch.linalg.vector_norm(mu)
        return -mu / norm if norm > 0 else torch.zeros_like(mu)
    raise ValueError(f"attack perturbation must be one of {PERTURBATIONS}; got {kind!r}")


def _largest_gamma(a: float, lin: torch.Tensor, const: torch.Tensor, bound: torch.Tensor) -> float:
    """The largest γ >= 0 with a γ² + 2 lin_i γ + const_i <= bound_i for every i (a > 0; γ = 0 holds)."""
    disc = (lin * lin - a * (const - bound)).clamp_min(0.0)
    roots = (-lin + disc.sqrt()) / a
    return max(float(roots.min()), 0.0)


#: the largest γ of min-sum's ``bound = "min"`` (the authors' released code: a bisection that starts at
#: γ = 50 and moves by 25, 12.5, ... so that it never exceeds 100)
MIN_SUM_GAMMA_CAP = 100.0


def min_max_sum_point(honest: torch.Tensor, perturbation: str, use_sum: bool,
                      bound: str = "max") -> tuple[torch.Tensor, torch.Tensor, float]:
    """(μ, ∇p, γ) of min-max (``use_sum`` False) or min-sum: the blind attack sends μ + γ∇p."""
    if bound not in ("max", "min"):
        raise ValueError(f"min_sum: bound must be 'max' or 'min'; got {bound!r}")
    x, mu, sigma = _stats(honest)
    p = perturbation_direction(mu, sigma, perturbation)
    a = float(p @ p)
    if a == 0.0:
        return mu, p, 0.0
    c = mu.unsqueeze(0) - x                      # m − x_i = c_i + γ p
    lin, const = c @ p, (c * c).sum(dim=1)       # ‖c_i + γ p‖² = a γ² + 2 (c_i·p) γ + ‖c_i‖²
    d2 = pairwise_sq_distances(x).to(x.device)
    if use_sum:                                  # Σ_i ‖m − x_i‖² <= max_i (or min_i) Σ_j ‖x_i − x_j‖²
        h = x.shape[0]
        sums = d2.sum(dim=1)
        limit = sums.max() if bound == "max" else sums.min()
        gamma = _largest_gamma(h * a, lin.sum().reshape(1), const.sum().reshape(1), limit.reshape(1))
        if bound == "min":
            gamma = min(gamma, MIN_SUM_GAMMA_CAP)
    else:                                        # max_i ‖m − x_i‖ <= max_{i,j} ‖x_i − x_j‖
        gamma = _largest_gamma(a, lin, const, d2.max().expand_as(lin))
    return mu, p, gamma


def _min_max_sum(byzantine: torch.Tensor, honest: torch.Tensor, perturbation: str, use_sum: bool,
                 bound: str = "max") -> torch.Tensor:
    if bound not in ("max", "min"):
        raise ValueError(f"min_sum: bound must be 'max' or 'min'; got {bound!r}")
    if honest.shape[0] == 0:
        return byzantine
    mu, p, gamma = min_max_sum_point(honest, perturbation, use_sum, bound)
    return _copies(mu + gamma * p, byzantine)


def min_max(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
            perturbation: str = "std") -> torch.Tensor:
    """Min-Max (Shejwalkar & Houmansadr, NDSS 2021): every Byzantine client sends m = μ + γ ∇p with
    the largest γ such that

        max_i ‖m − x_i‖ <= max_{i,j} ‖x_i − x_j‖,

    i.e. m is no farther from any honest row than the two most distant honest rows are from each
    other. The paper searches γ by bisection; each constraint is a quadratic in γ, so we solve for the
    largest γ exactly. ∇p: :func:`perturbation_direction` (``attack.perturbation``, default −σ)."""
    return _min_max_sum(byzantine, honest, perturbation, use_sum=False)


def min_sum(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
            perturbation: str = "std", bound: str = "max") -> torch.Tensor:
    """Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): m = μ + γ ∇p with the largest γ such that

        Σ_i ‖m − x_i‖² <= max_i Σ_j ‖x_i − x_j‖²     (``bound = "max"``, the paper's formula, default)

    (the sum of squared distances from m to the honest rows is no more than some honest row's), solved
    exactly as in :func:`min_max`. ``bound = "min"`` is the authors' released code: the right-hand side
    is min_i Σ_j ‖x_i − x_j‖² (no more than *every* honest row's, so m hides better and moves less) and
    γ <= :data:`MIN_SUM_GAMMA_CAP` (their bisection cannot exceed it)."""
    return _min_max_sum(byzantine, honest, perturbation, use_sum=True, bound=bound)


def mimic(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Mimic (Karimireddy, He & Jaggi, ICLR 2022): every Byzantine client sends a copy of the honest
    row i* = argmax_i |zᵀ(x_i − μ)|, z the top principal direction of the honest rows, which
    over-weights that one client's data and so the heterogeneity between clients. The paper tracks z
    across rounds; here z is exact within the round (top eigenvector of the h × h centred Gram matrix,
    mapped back)."""
    if honest.shape[0] == 0:
        return byzantine
    x, mu, _ = _stats(honest)
    xc = x - mu
    gram = xc @ xc.T
    _, vecs = torch.linalg.eigh(gram)
    v = vecs[:, -1]                              # X_c z ∝ (X_c X_cᵀ) v = λ v: projections ∝ v
    best = int(torch.argmax(v.abs()))
    return _copies(x[best], byzantine)


def _fang_trimmed_mean(byzantine: torch.Tensor, x: torch.Tensor, mu: torch.Tensor,
                       generator: torch.Generator, beta: float = 2.0) -> torch.Tensor:
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    u = torch.rand(byzantine.shape, generator=generator, dtype=torch.float64).to(x.device)
    # honest direction up (μ_j > 0): push down, values in [lo/β, lo] (lo > 0) or [β·lo, lo] (lo <= 0)
    down_a = torch.where(lo > 0, lo / beta, lo * beta)
    down = down_a + u * (lo - down_a)
    # honest direction down or flat: push up, values in [hi, β·hi] (hi > 0) or [hi, hi/β] (hi <= 0)
    up_b = torch.where(hi > 0, hi * beta, hi / beta)
    up = hi + u * (up_b - hi)
    return torch.where(mu > 0, down, up).to(byzantine.dtype)


def _krum_picks_byzantine(d_hh: torch.Tensor, d_hb: torch.Tensor, b: int, f: int) -> bool:
    """Whether Krum (f) selects one of b identical Byzantine rows, from the honest-honest distances
    d_hh (h, h) and each honest row's distance d_hb (h,) to the Byzantine point."""
    h = d_hh.shape[0]
    n, k = h + b, h + b - f - 2
    full = torch.zeros(n, n, dtype=torch.float64, device=d_hh.device)
    full[:h, :h] = d_hh
    full[:h, h:] = d_hb.unsqueeze(1)
    full[h:, :h] = d_hb.unsqueeze(0)
    full.fill_diagonal_(float("inf"))
    scores = full.topk(k, dim=1, largest=False).values.sum(dim=1)
    return bool(scores[h:].min() <= scores[:h].min())


def _fang_krum(byzantine: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, threshold: float = 1e-5) -> torch.Tensor:
    h, b = x.shape[0], byzantine.shape[0]
    n, d = h + b, x.shape[1]
    f = max(0, min(b, (n - 3) // 2))
    s = torch.sign(mu)
    s_norm2, s_dot = float(s @ s), x @ s
    sq = (x * x).sum(dim=1)
    d_hh = pairwise_sq_distances(x).to(x.device)
    # Fang et al.'s upper bound on λ: distances (not squared) among the honest rows and from the current
    # φ (the zero delta); Γ̃_i the n − f − 2 honest rows nearest to x_i
    k = min(n - f - 2, h - 1)
    near = 0.0
    if k > 0:
        dist = d_hh.sqrt().fill_diagonal_(float("inf"))
        near = float(dist.topk(k, dim=1, largest=False).values.sum(dim=1).min())
    root_d = math.sqrt(d)
    lam = near / (max(n - 2 * f - 1, 1) * root_d) + float(sq.sqrt().max()) / root_d
    while lam > threshold:
        d_hb = lam * lam * s_norm2 + 2 * lam * s_dot + sq     # ‖−λ s − x_i‖²
        if _krum_picks_byzantine(d_hh, d_hb, b, f):
            break
        lam /= 2
    return _copies(-lam * s, byzantine)


def fang(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
         target: str = "trimmed_mean") -> torch.Tensor:
    """Fang, Cao, Jia & Gong (USENIX Security 2020), full-knowledge local model poisoning, crafted for
    the aggregator ``target``. With s = sign(μ), the direction the honest clients move φ in:

    - ``krum``: every Byzantine client sends −λ s with the largest λ (halved from the paper's upper
      bound down to 1e-5) for which Krum, assuming f = b, selects a Byzantine row;
    - ``trimmed_mean`` (also used against the median): coordinate j gets values beyond the honest
      extreme opposite to s_j: if s_j > 0, uniform in [min_j/2, min_j] (min_j > 0) or [2 min_j, min_j];
      otherwise uniform in [max_j, 2 max_j] (max_j > 0) or [max_j, max_j/2], drawn per client.
    """
    if honest.shape[0] == 0:
        return byzantine
    x, mu, _ = _stats(honest)
    if target == "krum":
        return _fang_krum(byzantine, x, mu)
    if target == "trimmed_mean":
        return _fang_trimmed_mean(byzantine, x, mu, generator)
    raise ValueError(f"fang: target must be 'krum' or 'trimmed_mean'; got {target!r}")
