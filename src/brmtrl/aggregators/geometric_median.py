"""The geometric median by smoothed Weiszfeld in the span of the rows (Weiszfeld 1937; Pillutla, Kakade &
Harchaoui, IEEE TSP 2022), on the Gram matrix of :mod:`brmtrl.aggregators.gram`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .base import AggregateResult, _rows, _safe_norms, combine_rows
from .gram import (_CAP_LOG2, _MAX_PASSES, _chunk, _central_gram, _Gram, _gram_about, _pow2, _recentred,
                   _sq_distances, _Units, _units)
from .pre import MixedRows

__all__ = ["GeometricMedianResult", "geometric_median", "geometric_median_mixed", "geometric_median_mixed_trusted",
           "geometric_median_result", "geometric_median_trust", "geometric_median_trusted", "weiszfeld_reference"]

_EXACT_ITER = 100                        # exact O(nd) Weiszfeld iterations, at most, when the Gram cannot certify
_FLOOR = 32                              # accuracy the Gram certifies: max(tol, _FLOOR·γ) (see _weiszfeld_gram)


@dataclass(frozen=True)
class GeometricMedianResult:
    """The point, the affine weights α (point = Σ α_i x_i), Weiszfeld iterations and convergence."""

    point: torch.Tensor
    weights: torch.Tensor
    iterations: int
    converged: bool
    objective: float


def geometric_median_result(x: torch.Tensor, *, tol: float = 1e-8, max_iter: int = 1000,
                            eps: float = 1e-8) -> GeometricMedianResult:
    """Smoothed Weiszfeld iterations for argmin_z Σ_i ‖z − x_i‖, run in the span of the rows.

    Update (Weiszfeld 1937; smoothing ν = ``eps`` as in Pillutla, Kakade & Harchaoui, "Robust
    Aggregation for Federated Learning", IEEE TSP 2022)::

        β_i = 1 / max(ν, ‖z − x_i‖),   z ← Σ_i β_i x_i / Σ_i β_i

    Every iterate is an affine combination z = Σ α_i x_i (Σ α_i = 1), so with G the Gram matrix of the
    rows about a central row x_k, ‖z − x_i‖² = G_ii − 2 (Gα)_i + αᵀGα and each iteration costs O(n²)
    instead of O(nd). It starts from z_0 ∝ Σ_i x_i / max(‖x_i − x_k‖, median_j ‖x_j − x_k‖) and stops when

        ‖z_{t+1} − z_t‖ ≤ tol · s_t,   s_t = max(ν, median_i ‖z_t − x_i‖),

    a scale no minority of rows can inflate (it is at most the distance of an honest row to z_t), or
    after ``max_iter`` iterations. ``converged`` is True only if, in addition, the rounding error of that
    last step, bounded from the Gram's rounding level γ, is ≤ max(tol, 32γ)·s_t, so an exact Weiszfeld
    step from the returned point's predecessor lands within about max(tol, 32γ)·s of it. When the bound
    is too loose the Gram is rebuilt about the row nearest z, and failing that the iterations finish with
    exact O(nd) Weiszfeld steps on the rows (at most 100). Rows beyond float64's range of distances are
    handled by the overflow guard (see ``docs/aggregators.md``); ``weights`` are then affine weights on
    the rows that can be below float64's normal range, while the point is computed from the pulled-in
    rows. Sample counts are never used.
    """
    x = _rows(x, "geometric_median")
    _check(tol, max_iter, eps)
    n, d = x.shape
    if n == 1 or d == 0:
        weights = torch.full((n,), 1.0 / n, dtype=torch.float64, device=x.device)
        point = x[0].clone() if n == 1 else x.new_zeros(0)
        return GeometricMedianResult(point, weights, 0, True, 0.0)
    gr, un = _central_gram(x, eps)
    alpha, it, converged, gr, un = _weiszfeld(lambda k: _gram_about(x, k), lambda: x, gr, un, tol, max_iter, eps)
    point, weights = _gm_point(x, gr, un, alpha)
    return GeometricMedianResult(point, weights, it, bool(converged), _gm_objective(gr, un, alpha))


def geometric_median_mixed(rows: MixedRows, *, tol: float = 1e-8, max_iter: int = 1000,
                           eps: float = 1e-8) -> GeometricMedianResult:
    """:func:`geometric_median_result` of the rows y = M x of mixing pre-steps, without computing them:
    the same iterations on y's Gram, A G Aᵀ from x's (:class:`brmtrl.aggregators.pre.MixedRows`), and
    the point Σ α_i y_i = (Mᵀα) x in one GEMV over x. ``weights`` are α, on the rows of y. The rows are
    computed only where the plain path would need them: x's Gram needed the overflow guard's rescaled
    pass, rows were pulled in, or the Gram cannot certify the result (exact iterations)."""
    _check(tol, max_iter, eps)
    x = rows.x
    gr0 = rows.gram_about(0) if rows.n > 1 and x.shape[1] > 0 else None
    if gr0 is None:
        return geometric_median_result(rows.rows(), tol=tol, max_iter=max_iter, eps=eps)

    def gram_about(k: int) -> _Gram:
        gr = gr0 if k == 0 else rows.gram_about(k)
        assert gr is not None           # x's Gram exists (gr0 came from it)
        return gr

    first = int(np.argmin(np.median(np.sqrt(_sq_distances(gr0)), axis=1)))     # the medoid of y
    gr, un = _recentred(gram_about, first, eps)
    alpha, it, converged, gr, un = _weiszfeld(gram_about, rows.rows, gr, un, tol, max_iter, eps)
    if un.capped.any():
        point, _ = _gm_point(rows.rows(), gr, un, alpha)
    else:
        point, _ = rows.combine(alpha)
    return GeometricMedianResult(point, torch.from_numpy(alpha).to(x.device), it, bool(converged),
                                 _gm_objective(gr, un, alpha))


def _check(tol: float, max_iter: int, eps: float) -> None:
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"geometric_median: tol must be a float > 0. Got {tol!r} instead.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"geometric_median: max_iter must be an int >= 1. Got {max_iter!r} instead.")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"geometric_median: eps must be a float > 0. Got {eps!r} instead.")


def _weiszfeld(gram_about: Callable[[int], _Gram], rows: Callable[[], torch.Tensor], gr: _Gram, un: _Units,
               tol: float, max_iter: int, eps: float) -> tuple[np.ndarray, int, bool, _Gram, _Units]:
    """The iterations of :func:`geometric_median_result` from a central Gram: on the Gram while it
    certifies them, rebuilt about the row nearest z when it does not, then exact steps on ``rows()``.
    Returns α, the iterations, convergence, and the Gram α refers to."""
    nu = max(float(np.ldexp(eps, -un.e)), 1e-300)                 # ν in units of σ (≤ 1)
    alpha = _robust_start(un.a, nu)
    it, tried = 0, {gr.k}
    while True:
        alpha, steps, stopped, certified, nearest = _weiszfeld_gram(un, gr.gamma, alpha, tol, max_iter - it, nu)
        it += steps
        converged = stopped and certified
        if converged or not stopped:
            break
        if nearest not in tried and len(tried) < _MAX_PASSES:      # rebuild about the row nearest z
            tried.add(nearest)
            gr = gram_about(nearest)
            un = _units(gr, eps)
            nu = max(float(np.ldexp(eps, -un.e)), 1e-300)
            continue
        alpha, steps, converged = _weiszfeld_exact(rows(), gr, un, alpha, tol, min(max_iter - it, _EXACT_ITER), nu)
        it += steps
        break
    return alpha, it, bool(converged), gr, un


def _robust_start(a: np.ndarray, nu: float) -> np.ndarray:
    """α_0 ∝ 1 / max(a_i, median_j a_j, ν), a_i = ‖x_i − x_k‖: the rows near the centre weigh alike and a
    far row's pull is at most the median distance, so z_0 is near the bulk whatever the far rows hold."""
    n = len(a)
    w = 1.0 / np.maximum(a, max(float(np.partition(a, n // 2)[n // 2]), nu))
    return w / w.sum()


def _small_step(moved: float, last: float, limit: float) -> bool:
    """The stopping rule: the step, and the distance to the fixed point it implies under linear convergence
    at the observed rate L = step_t / step_{t−1} (step · L / (1 − L)), are both ≤ ``limit``."""
    if not moved <= limit:
        return False
    rate = moved / last if last > 0 else 0.0
    return rate < 1.0 and moved * rate <= limit * (1.0 - rate)


def _weiszfeld_gram(un: _Units, gamma: float, alpha: np.ndarray, tol: float, budget: int,
                    nu: float) -> tuple[np.ndarray, int, bool, bool, int]:
    """Weiszfeld on the affine weights α (host, float64, in units of σ). Returns α, the iterations run,
    whether the step rule was met, whether the last step's rounding error is certified small, and the
    row nearest the iterate.

    Certificate: with r_i the rows' error radii (a_i = ‖x_i − x_k‖ for a Gram of the rows; larger for mixed
    rows, :class:`brmtrl.aggregators.pre.MixedRows`) and b = Σ α_j r_j, the computed ‖z − x_i‖² is off by
    at most e_i = γ (r_i + b)², so β_i lies in [1/max(ν, √(d_i² + e_i)), 1/max(ν, √(d_i² − e_i))] and the step
    z ← Σ β_i x_i / Σ β_i is off by at most E = 2 Σ_i Δβ_i ‖z − x_i‖ / Σ_i β_i. It is certified when
    E ≤ max(tol, 32γ) · s.
    """
    g, a, r = un.g, un.a, un.r
    n = len(a)
    diag = np.diagonal(g)
    it, stopped = 0, False
    prev, d2, scale, last = alpha, None, nu, math.inf
    with np.errstate(over="ignore", invalid="ignore"):
        while it < budget:
            it += 1
            galpha = g @ alpha
            d2 = np.maximum(diag - 2.0 * galpha + alpha @ galpha, 0.0)
            dist = np.sqrt(d2)
            beta = 1.0 / np.maximum(dist, nu)
            new = beta / beta.sum()
            step = new - alpha
            moved = math.sqrt(max(float(step @ g @ step), 0.0) + gamma * float(np.abs(step) @ r) ** 2)
            scale = max(float(np.partition(dist, n // 2)[n // 2]), nu)
            prev, alpha = alpha, new
            if _small_step(moved, last, tol * scale):
                stopped = True
                break
            last = moved
        if d2 is None:
            return alpha, 0, False, False, 0
        err2 = gamma * (r + float(prev @ r)) ** 2
        hi = np.sqrt(d2 + err2)
        lo = np.sqrt(np.maximum(d2 - err2, 0.0))
        b_lo, b_hi = 1.0 / np.maximum(hi, nu), 1.0 / np.maximum(lo, nu)
        err = 2.0 * float((b_hi - b_lo) @ hi) / float(b_lo.sum())
    certified = bool(err <= max(tol, _FLOOR * gamma) * scale)
    return alpha, it, stopped, certified, int(np.argmin(np.nan_to_num(hi, nan=np.inf)))


def _scaled_rows(x: torch.Tensor, gr: _Gram, un: _Units, cols: slice,
                 rows: np.ndarray | None = None) -> torch.Tensor:
    """Columns ``cols`` of y'_i = D_i (x_i − x_k) 2^(−p_i) (units of σ, far rows pulled in), float64,
    computed as D_i (x_i 2^(−p_i) − x_k 2^(−p_i)) so that nothing overflows."""
    idx = np.arange(len(un.a)) if rows is None else rows
    s1 = torch.from_numpy(_pow2(-gr.p[idx])).to(x.device)[:, None]
    s2 = torch.from_numpy(un.d[idx]).to(x.device)[:, None]
    c = x[:, cols].to(torch.float64)
    return (c[torch.from_numpy(idx).to(x.device)] * s1 - c[gr.k] * s1) * s2


def _weiszfeld_exact(x: torch.Tensor, gr: _Gram, un: _Units, alpha: np.ndarray, tol: float, budget: int,
                     nu: float) -> tuple[np.ndarray, int, bool]:
    """Plain Weiszfeld iterations with the distances ‖z − y'_i‖ and the step taken from the rows
    themselves (O(nd) each, float64): the fallback when the Gram cannot certify the result. One pass
    per iteration gives the distances at z_t and ‖z_t − z_{t−1}‖; stops by the same rule as the Gram
    iterations (:func:`_small_step` with tol · s_t)."""
    n, d = x.shape
    step = _chunk(n)
    dev = x.device
    prev: np.ndarray | None = None
    it, last = 0, math.inf
    while True:
        a_t = torch.from_numpy(alpha).to(dev)
        p_t = None if prev is None else torch.from_numpy(prev).to(dev)
        d2 = torch.zeros(n, dtype=torch.float64, device=dev)
        moved = torch.zeros((), dtype=torch.float64, device=dev)
        for start in range(0, d, step):
            y = _scaled_rows(x, gr, un, slice(start, start + step))
            z = a_t @ y
            d2 += (y - z).square().sum(dim=1)
            if p_t is not None:
                moved += (z - p_t @ y).square().sum()
        dist = np.sqrt(d2.cpu().numpy())
        scale = max(float(np.partition(dist, n // 2)[n // 2]), nu)
        if p_t is not None:
            if _small_step(math.sqrt(float(moved)), last, tol * scale):
                return alpha, it, True
            last = math.sqrt(float(moved))
        if it >= budget:
            return alpha, it, False
        beta = 1.0 / np.maximum(dist, nu)
        prev, alpha = alpha, beta / beta.sum()
        it += 1


def _gm_point(x: torch.Tensor, gr: _Gram, un: _Units, alpha: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """z = Σ α_i x'_i (x'_i the rows, the far ones pulled in) and its affine weights on the rows x_i.
    Without pulled-in rows this is one GEMV, z = αX."""
    dev = x.device
    n, d = x.shape
    step = _chunk(n)
    if not un.capped.any():
        weights = torch.from_numpy(alpha).to(dev)
        return combine_rows(x, weights), weights
    # x'_i = x_k + c_i (x_i − x_k), c_i = D_i 2^(E − p_i), for a pulled-in row i
    far = np.flatnonzero(un.capped)
    with np.errstate(under="ignore"):
        c = un.d[far] * _pow2(un.e - gr.p[far])
    w = alpha.copy()
    w[far] = alpha[far] * c
    w[gr.k] += float(alpha[far] @ (1.0 - c))
    near = alpha.copy()                                # Σ_near α_i x_i + (Σ_far α_i) x_k ...
    near[far] = 0.0
    near[gr.k] += float(alpha[far].sum())
    near_t = torch.from_numpy(near).to(dev)
    coef = torch.from_numpy(alpha[far]).to(dev)        # ... + 2^E Σ_far α_i y'_i
    sigma = math.ldexp(1.0, un.e)
    point = torch.empty(d, dtype=torch.float64, device=dev)
    for start in range(0, d, step):
        cols = slice(start, start + step)
        point[cols] = near_t @ x[:, cols].to(torch.float64) + (coef @ _scaled_rows(x, gr, un, cols, far)) * sigma
    return point.to(x.dtype), torch.from_numpy(w).to(dev)


def _gm_objective(gr: _Gram, un: _Units, alpha: np.ndarray) -> float:
    """Σ_i ‖z − x_i‖ in the input's units (inf if it exceeds float64's range)."""
    g = un.g
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        galpha = g @ alpha
        dist = np.sqrt(np.maximum(np.diagonal(g) - 2.0 * galpha + alpha @ galpha, 0.0))
        true = np.ldexp(dist, un.e)
        far = un.capped
        if far.any():   # ‖x_i − z‖ ≈ ‖x_i − x_k‖ + (‖x'_i − z‖ − R) along the ray
            true[far] = (np.ldexp(np.sqrt(np.diagonal(gr.g)[far]), gr.p[far])
                         + np.ldexp(dist[far] - 2.0 ** _CAP_LOG2, un.e))
        return float(true.sum())


def geometric_median(x: torch.Tensor, *, tol: float = 1e-8, max_iter: int = 1000,
                     eps: float = 1e-8) -> torch.Tensor:
    """Geometric median argmin_z Σ_i ‖z − x_i‖ by smoothed Weiszfeld (see
    :func:`geometric_median_result`); breakdown point 1/2 (Lopuhaä & Rousseeuw 1991)."""
    return geometric_median_result(x, tol=tol, max_iter=max_iter, eps=eps).point


def geometric_median_trust(res: GeometricMedianResult) -> torch.Tensor:
    """Each row's trust, min(1, m / ‖z − x_i‖) with m the median distance of the rows to the point z: rows
    at most the median distance away are fully trusted, a row ten times as far gets 0.1.

    Read off the weights, with no pass over the rows: the last Weiszfeld weights are α_i ∝ 1/max(ν, ‖z − x_i‖)
    at the last iterate, so ‖z − x_i‖ / m = median_j α_j / α_i and trust_i = min(1, α_i / median_j α_j)
    (within ν: fully trusted). Rows pulled in by the overflow guard have tiny affine weights, hence
    trust ≈ 0. (n,) float64 in [0, 1].
    """
    a = res.weights.to(torch.float64)
    med = float(np.median(a.cpu().numpy()))
    if not med > 0:
        return torch.ones_like(a)
    return torch.clamp(a / med, min=0.0, max=1.0)


def geometric_median_trusted(x: torch.Tensor, *, tol: float = 1e-8, max_iter: int = 1000,
                             eps: float = 1e-8) -> AggregateResult:
    """:func:`geometric_median_result` as an :class:`AggregateResult`: the point, each row's trust
    (:func:`geometric_median_trust`) and ``info`` with ``gm_iterations`` and ``gm_converged``."""
    res = geometric_median_result(x, tol=tol, max_iter=max_iter, eps=eps)
    return AggregateResult(res.point, geometric_median_trust(res),
                           {"gm_iterations": res.iterations, "gm_converged": res.converged})


def geometric_median_mixed_trusted(rows: MixedRows, *, tol: float = 1e-8, max_iter: int = 1000,
                                   eps: float = 1e-8) -> AggregateResult:
    """:func:`geometric_median_trusted` for the uncomputed rows of mixing pre-steps
    (:func:`geometric_median_mixed`): the point, the trust of y's rows and ``info``."""
    res = geometric_median_mixed(rows, tol=tol, max_iter=max_iter, eps=eps)
    return AggregateResult(res.point, geometric_median_trust(res),
                           {"gm_iterations": res.iterations, "gm_converged": res.converged})


def weiszfeld_reference(x: torch.Tensor, *, tol: float = 1e-12, max_iter: int = 100_000,
                        eps: float = 1e-12) -> torch.Tensor:
    """Plain float64 Weiszfeld on the rows themselves, O(nd) per iteration: the test oracle.

    The update z ← Σ_i β_i x_i / Σ_i β_i, β_i = 1/max(ν, ‖z − x_i‖) (Weiszfeld 1937), written as

        z ← z + Σ_i min(1, ‖x_i − z‖/ν) u_i / Σ_i β_i,   u_i = (x_i − z)/‖x_i − z‖,

    so that a row whose distance exceeds float64's range still pulls with its unit vector (its β_i, below
    1e-308, drops out of the denominator only). Norms are of the halved differences rescaled by their
    largest entry, so no square overflows. Starts from the weighted mean z_0 ∝ Σ_i x_i / max(‖x_i − m‖,
    median_j ‖x_j − m‖) about the coordinate-wise median m; stops when a step is
    ≤ tol · max(ν, median_i ‖z − x_i‖).
    """
    x64 = _rows(x, "weiszfeld_reference").to(torch.float64)
    half = x64 * 0.5

    def directions(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = half - 0.5 * z
        m = v.abs().amax(dim=1)
        v = v / torch.where(m > 0, m, 1.0)[:, None]
        r = torch.linalg.vector_norm(v, dim=1)
        return v / torch.where(r > 0, r, 1.0)[:, None], 2.0 * m * r      # u_i, ‖x_i − z‖ (inf if beyond range)

    m0 = x64.median(dim=0).values
    _, r = directions(m0)
    w = 1.0 / r.clamp_min(max(float(r.median()), eps))
    z = ((w / w.sum())[:, None] * x64).sum(dim=0)
    for _ in range(max_iter):
        u, r = directions(z)
        step = (torch.clamp(r / eps, max=1.0)[:, None] * u).sum(dim=0) / (1.0 / r.clamp_min(eps)).sum()
        z = z + step
        if float(_safe_norms(step[None])[0]) <= tol * max(float(r.median()), eps):
            break
    return z

