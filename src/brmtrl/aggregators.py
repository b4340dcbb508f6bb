"""Robust aggregation rules: pure functions on a stacked ``(n, d)`` tensor, one row per client.

Every rule takes the rows as a 2-D tensor and returns a 1-D tensor of length ``d`` in the input's
dtype; hyperparameters are keyword-only. Distances come from one Gram matrix of the rows centred on a
central row (never on the mean, which one row can move anywhere), accumulated in float64, so that
``d = 10⁶`` costs one GEMM and the rest is O(n²); rows of any finite size, up to float64's range, are
handled (see :func:`pairwise_sq_distances` and :func:`geometric_median_result`). No rule takes sample
counts: a Byzantine client could report any count.

>>> import torch
>>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, 0.2], [100.0, 100.0]])
>>> krum(x, f=1)
tensor([0.2000, 0.2000])
>>> mean(x)
tensor([20.2400, 20.2400])
>>> geometric_median(x).round(decimals=2)
tensor([0.2100, 0.2100])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

__all__ = [
    "AGGREGATORS",
    "GeometricMedianResult",
    "Rule",
    "geometric_median",
    "geometric_median_result",
    "krum",
    "krum_scores",
    "mean",
    "median",
    "multi_krum",
    "pairwise_sq_distances",
    "trimmed_mean",
    "weiszfeld_reference",
]


def _rows(x: torch.Tensor, rule: str) -> torch.Tensor:
    """The one input check every rule shares."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{rule}: expected a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{rule}: expected a 2-D tensor (one row per client), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{rule}: no rows to aggregate")
    if not x.is_floating_point():
        raise TypeError(f"{rule}: expected a floating-point tensor, got {x.dtype}")
    return x


def _check_f(rule: str, f: int, n: int, need: int) -> None:
    """``need`` is the smallest n as a function of f: 2f+1 (median-type) or 2f+3 (Krum)."""
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"{rule}: f must be an int >= 0. Got {f!r} instead.")
    if n < need:
        raise ValueError(f"{rule}: cannot tolerate f={f} Byzantine rows among n={n}; it needs n >= {need}")


# --------------------------------------------------------------------------- Gram matrix about a central row
#
# Every distance-based rule needs ‖x_i − x_j‖ (Krum) or ‖z − x_i‖ for z = Σ α_j x_j (Weiszfeld). Both come
# from one Gram matrix G_ij = <x_i − c, x_j − c> in float64, built in one pass over X, and the centre c
# decides the precision: ‖x_i − x_j‖² = G_ii + G_jj − 2 G_ij has an absolute rounding error of about
# γ (‖x_i − c‖ + ‖x_j − c‖)², so the distances between rows near c keep their relative precision and
# rows far from c only lose precision in their own (large) distances. The mean is a bad centre (one row
# of size M moves it by M/n and the honest distances cancel); the centre here is a *row near the bulk of
# the data*, chosen cheaply and then checked on the Gram matrix itself.

_SAMPLE_BLOCKS, _SAMPLE_WIDTH = 16, 16   # columns read to choose the first centre: 16 blocks of 16
_FAST_LIMIT = 2.0 ** 900                 # a Gram entry beyond this, or non-finite: the rescaled float64 pass
_CAP_LOG2 = 256                          # overflow guard: rows beyond 2^256 σ from the centre are pulled in
_MAX_PASSES = 4                          # Gram passes over X (first centre + re-centrings), at most
_EXACT_ITER = 100                        # exact O(nd) Weiszfeld iterations, at most, when the Gram cannot certify
_FLOOR = 32                              # accuracy the Gram certifies: max(tol, _FLOOR·γ) (see _weiszfeld_gram)
_U64 = 2.0 ** -53


def _chunk(n: int) -> int:
    """Columns per block: ~2²¹ entries, so that a block stays in cache for its GEMM."""
    return max(4096, (1 << 21) // max(n, 1))


def _gamma(u: float, m: int, blocks: int) -> float:
    """Relative rounding level of a Gram entry, |ΔG_ij| ≲ γ ‖x_i − c‖‖x_j − c‖: the centring subtraction
    (2u), a length-m dot product in precision u with blocked/SIMD accumulation (u·m^¼, the probabilistic
    model of Higham & Mary, SIAM J. Sci. Comput. 2019, for a √m-blocked sum), and the float64 sum of the
    block Grams. A model of the typical error, not a worst-case bound (that would be m·u)."""
    return u * (4.0 + m ** 0.25) + _U64 * blocks


def _pow2(e: np.ndarray) -> np.ndarray:
    """2^e elementwise, exactly (0 or inf beyond float64's range)."""
    with np.errstate(over="ignore", under="ignore"):
        return np.ldexp(1.0, np.clip(e, -1100, 1100).astype(np.int64))


@dataclass(frozen=True)
class _Gram:
    """G_ij = <y_i, y_j>, y_i = (x_i − x_k) 2^(−p_i), float64 on the host."""

    g: np.ndarray      # (n, n)
    p: np.ndarray      # (n,) int64 row exponents; all 0 unless the rescaled pass was needed
    k: int             # the centre row
    gamma: float       # rounding level of the entries (see _gamma)


@dataclass(frozen=True)
class _Units:
    """The Gram matrix in units of σ = 2^E (E: log2 of the median distance of the rows to the centre),
    with the rows farther than 2^256 σ from the centre pulled in to that distance along the ray from the
    centre. Row i in these units is y'_i = D_i y_i."""

    g: np.ndarray        # (n, n) <y'_i, y'_j>
    a: np.ndarray        # (n,) ‖y'_i‖: distances to the centre, in units of σ
    d: np.ndarray        # (n,) D_i
    e: int               # E
    capped: np.ndarray   # (n,) bool


def _first_centre(x: torch.Tensor) -> int:
    """A row near the bulk: the row nearest the coordinate-wise median of a column sample (16 evenly spread
    blocks of 16 columns; all columns if d ≤ 256). Cheap (n × 256 values) and right for any attack that
    does not single out the sampled columns; :func:`_central_gram` checks it either way."""
    n, d = x.shape
    if n <= 2 or d == 0:
        return 0
    if d <= _SAMPLE_BLOCKS * _SAMPLE_WIDTH:
        s = x
    else:
        starts = np.linspace(0, d - _SAMPLE_WIDTH, _SAMPLE_BLOCKS).astype(np.int64).tolist()
        s = torch.cat([x[:, i:i + _SAMPLE_WIDTH] for i in starts], dim=1)
    s = s.to(torch.float64) * 0.5                      # halves: no difference overflows
    diff = s - s.median(dim=0).values
    big = diff.abs().amax(dim=1)
    r = torch.linalg.vector_norm(diff / torch.where(big > 0, big, 1.0)[:, None], dim=1)
    key = torch.nan_to_num(torch.log2(big) + torch.log2(r), nan=math.inf)   # log2 of the distance, no overflow
    return int(torch.argmin(key))


def _gram_about(x: torch.Tensor, k: int) -> _Gram:
    """G = (X − x_k)(X − x_k)ᵀ in one pass: column blocks centred in the input's precision, each block's
    GEMM in that precision, summed in float64. If an entry overflows (or exceeds 2^900) the pass is
    redone in float64 with each row scaled by a power of two (:func:`_gram_rescaled`)."""
    n, d = x.shape
    step = _chunk(n)
    g = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for start in range(0, d, step):
        c = x[:, start:start + step]
        c = c - c[k]
        g += (c @ c.T).to(torch.float64)
    gh = g.cpu().numpy()
    if np.isfinite(gh).all() and float(np.abs(gh).max(initial=0.0)) <= _FAST_LIMIT:
        u = torch.finfo(x.dtype).eps / 2
        return _Gram(gh, np.zeros(n, np.int64), k, _gamma(u, min(step, max(d, 1)), -(-d // step)))
    return _gram_rescaled(x, k)


def _gram_rescaled(x: torch.Tensor, k: int) -> _Gram:
    """The overflow guard for the Gram: y_i = (x_i − x_k) 2^(−p_i), 2^(p_i) the power of two just above
    max_j |x_ij − x_kj| (found in a first pass on halves, which cannot overflow), so every |y_ij| < 1
    and G = YYᵀ is computed in float64 without overflow for any finite input. Inputs narrower than float64
    only need the float64 pass (p = 0): their squares cannot overflow it."""
    n, d = x.shape
    step = _chunk(n)
    f64 = torch.float64
    p = np.zeros(n, np.int64)
    if torch.finfo(x.dtype).max > 1e300:
        big = torch.zeros(n, dtype=f64, device=x.device)
        for start in range(0, d, step):
            c = x[:, start:start + step].to(f64) * 0.5
            big = torch.maximum(big, (c - c[k]).abs().amax(dim=1))
        b = big.cpu().numpy()
        ok = np.isfinite(b) & (b > 0)
        p[ok] = np.clip(np.frexp(b[ok])[1].astype(np.int64) + 1, -1000, 1025)
    scale = torch.from_numpy(_pow2(-p)).to(x.device)[:, None]
    g = torch.zeros(n, n, dtype=f64, device=x.device)
    for start in range(0, d, step):
        c = x[:, start:start + step].to(f64)
        y = c * scale - c[k] * scale
        g += y @ y.T
    return _Gram(g.cpu().numpy(), p, k, _gamma(_U64, min(step, max(d, 1)), -(-d // step)))


def _units(gr: _Gram, floor: float = 0.0) -> _Units:
    """Express the Gram in units of σ = 2^E, E = ⌊log2 max(floor, median_i ‖x_i − x_k‖)⌋, a scale no
    minority of rows can inflate once the centre is central (``floor`` is the geometric median's
    smoothing ν, which keeps ν ≤ σ), and pull the rows farther than R = 2^256 σ from the centre in to
    distance R along the ray from the centre: the overflow guard, which keeps every entry below ~2^520.
    A row's pull on the geometric median depends only on its direction (optimality condition
    Σ_i (z − x_i)/‖z − x_i‖ = 0; Kuhn, Math. Programming 1973), and moving it along the ray from x_k
    turns that direction by at most ‖z* − x_k‖/R, so the median moves by ~2^-256 of the rows' spread."""
    g0, p = gr.g, gr.p
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        diag = np.maximum(np.diagonal(g0), 0.0)
        la = p + 0.5 * np.log2(diag)                        # log2 ‖x_i − x_k‖ (−inf for the centre)
        fin = np.sort(la[np.isfinite(la)])
        e = float(fin[len(fin) // 2]) if fin.size else -math.inf
        if floor > 0:
            e = max(e, math.log2(floor))
        e = int(min(max(math.floor(e), -1070), 1023)) if math.isfinite(e) else 0
        capped = la - e > _CAP_LOG2                         # False for NaN and −inf
        dd = np.ldexp(1.0, np.clip(p - e, -1100, 1100))
        if capped.any():
            dd[capped] = 2.0 ** _CAP_LOG2 / np.sqrt(diag[capped])
        g = dd[:, None] * g0 * dd[None, :]
        a = np.sqrt(np.maximum(np.diagonal(g), 0.0))
    return _Units(g, a, dd, e, capped)


def _off_centre(gr: _Gram, un: _Units) -> int | None:
    """None if the centre x_k is central: ‖x_m − x_k‖ ≤ 3 q_m for the medoid m, q_i the median distance of
    row i to the others (upper bounds, rounding included). Otherwise m, the row to re-centre on: then the
    distances among the rows near m are ≳ γ‖x_m − x_k‖², still resolved well enough to find m."""
    n = len(un.a)
    if n <= 2:
        return None
    diag, a = np.diagonal(un.g), un.a
    with np.errstate(over="ignore", invalid="ignore"):
        hi = np.sqrt(np.maximum(diag[:, None] + diag[None, :] - 2.0 * un.g, 0.0)
                     + gr.gamma * (a[:, None] + a[None, :]) ** 2)
    np.fill_diagonal(hi, np.inf)
    q = np.partition(hi, (n - 1) // 2, axis=1)[:, (n - 1) // 2]
    if not np.isfinite(q).all():
        return None
    m = int(np.argmin(q))
    return None if m == gr.k or a[m] <= 3.0 * q[m] else m


def _central_gram(x: torch.Tensor, floor: float = 0.0) -> tuple[_Gram, _Units]:
    """The Gram matrix about a central row: :func:`_first_centre`, then re-centred on the medoid while
    :func:`_off_centre` says so (one more pass each; at most ``_MAX_PASSES`` passes)."""
    gr = _gram_about(x, _first_centre(x))
    un = _units(gr, floor)
    for _ in range(_MAX_PASSES - 1):
        m = _off_centre(gr, un)
        if m is None:
            break
        gr = _gram_about(x, m)
        un = _units(gr, floor)
    return gr, un


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """‖x_i − x_j‖² for all pairs, (n, n) float64, from one Gram matrix about a central row x_k:

        ‖x_i − x_j‖² = G_ii + G_jj − 2 G_ij,   G_ij = <x_i − x_k, x_j − x_k>.

    The absolute error is about γ (‖x_i − x_k‖ + ‖x_j − x_k‖)², γ ≈ 50 u (u the input's unit roundoff), so
    the distances among the majority keep their relative precision whatever the other rows hold; a squared
    distance beyond float64's range is ``inf``. The centre is checked and re-chosen as described in
    ``docs/aggregators.md``.
    """
    x = _rows(x, "pairwise_sq_distances")
    gr, _ = _central_gram(x)
    g, p = gr.g, gr.p
    diag = np.diagonal(g)
    with np.errstate(over="ignore", invalid="ignore"):
        if not p.any():
            d2 = diag[:, None] + diag[None, :] - 2.0 * g
        else:   # rows in their own power-of-two scales: combine each pair at the larger one
            top = np.maximum(p[:, None], p[None, :])
            ri, rj = _pow2(p[:, None] - top), _pow2(p[None, :] - top)
            d2 = np.maximum(ri * ri * diag[:, None] + rj * rj * diag[None, :] - 2.0 * ri * rj * g, 0.0)
            d2 = np.ldexp(d2, np.clip(2 * top, -2200, 2200).astype(np.int64))
    d2 = np.maximum(d2, 0.0)
    np.fill_diagonal(d2, 0.0)
    return torch.from_numpy(d2).to(x.device)


# --------------------------------------------------------------------------- mean and medians
def mean(x: torch.Tensor) -> torch.Tensor:
    """Arithmetic mean x̄ = (1/n) Σ_i x_i (plain FedRep / FedAvg with equal weights). Not robust."""
    x = _rows(x, "mean")
    return x.to(torch.float64).mean(dim=0).to(x.dtype)


def median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (Yin, Chen, Ramchandran & Bartlett, ICML 2018): per coordinate, with
    v_(1) ≤ … ≤ v_(n) the sorted values, v_((n+1)/2) for odd n and (v_(n/2) + v_(n/2+1)) / 2 for even n
    (the average is taken in float64 and rounded once to the input's dtype)."""
    x = _rows(x, "median")
    n = x.shape[0]
    if n % 2:
        return x.median(dim=0).values
    mid = torch.topk(x, n // 2 + 1, dim=0, largest=False, sorted=True).values[-2:].to(torch.float64)
    return (0.5 * mid[0] + 0.5 * mid[1]).to(x.dtype)


def trimmed_mean(x: torch.Tensor, *, f: int = 0) -> torch.Tensor:
    """Coordinate-wise trimmed mean: per coordinate drop the f largest and f smallest values, average
    the rest (Yin et al., ICML 2018). Needs n >= 2f + 1."""
    x = _rows(x, "trimmed_mean")
    n = x.shape[0]
    _check_f("trimmed_mean", f, n, 2 * f + 1)
    s = x.to(torch.float64).sort(dim=0).values
    return s[f:n - f].mean(dim=0).to(x.dtype)


# --------------------------------------------------------------------------- geometric median
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
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"geometric_median: tol must be a float > 0. Got {tol!r} instead.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"geometric_median: max_iter must be an int >= 1. Got {max_iter!r} instead.")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"geometric_median: eps must be a float > 0. Got {eps!r} instead.")
    n, d = x.shape
    if n == 1 or d == 0:
        weights = torch.full((n,), 1.0 / n, dtype=torch.float64, device=x.device)
        point = x[0].clone() if n == 1 else x.new_zeros(0)
        return GeometricMedianResult(point, weights, 0, True, 0.0)
    gr, un = _central_gram(x, eps)
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
            gr = _gram_about(x, nearest)
            un = _units(gr, eps)
            nu = max(float(np.ldexp(eps, -un.e)), 1e-300)
            continue
        alpha, steps, converged = _weiszfeld_exact(x, gr, un, alpha, tol, min(max_iter - it, _EXACT_ITER), nu)
        it += steps
        break
    point, weights = _gm_point(x, gr, un, alpha)
    return GeometricMedianResult(point, weights, it, bool(converged), _gm_objective(gr, un, alpha))


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

    Certificate: with a_i = ‖x_i − x_k‖ and b = Σ α_j a_j, the computed ‖z − x_i‖² is off by at most
    e_i = γ (a_i + b)², so β_i lies in [1/max(ν, √(d_i² + e_i)), 1/max(ν, √(d_i² − e_i))] and the step
    z ← Σ β_i x_i / Σ β_i is off by at most E = 2 Σ_i Δβ_i ‖z − x_i‖ / Σ_i β_i. It is certified when
    E ≤ max(tol, 32γ) · s.
    """
    g, a = un.g, un.a
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
            moved = math.sqrt(max(float(step @ g @ step), 0.0) + gamma * float(np.abs(step) @ a) ** 2)
            scale = max(float(np.partition(dist, n // 2)[n // 2]), nu)
            prev, alpha = alpha, new
            if _small_step(moved, last, tol * scale):
                stopped = True
                break
            last = moved
        if d2 is None:
            return alpha, 0, False, False, 0
        err2 = gamma * (a + float(prev @ a)) ** 2
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
        info = torch.finfo(x.dtype)
        if x.dtype == torch.float64:
            return weights @ x, weights
        if float(alpha[alpha > 0].min(initial=1.0)) >= info.tiny / info.eps:     # weights normal in x's dtype
            return weights.to(x.dtype) @ x, weights
        point = torch.empty(d, dtype=torch.float64, device=dev)
        for start in range(0, d, step):
            point[start:start + step] = weights @ x[:, start:start + step].to(torch.float64)
        return point.to(x.dtype), weights
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


def _safe_norms(v: torch.Tensor) -> torch.Tensor:
    """Row norms of v (float64) with no square overflowing: ‖v_i‖ = m_i ‖v_i / m_i‖, m_i = max_j |v_ij|."""
    m = v.abs().amax(dim=1)
    return m * torch.linalg.vector_norm(v / torch.where(m > 0, m, 1.0)[:, None], dim=1)


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


# --------------------------------------------------------------------------- Krum
def krum_scores(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖², N_i the n − f − 2 rows nearest to x_i (j ≠ i), from
    :func:`pairwise_sq_distances` (so accurate among the majority whatever the other rows hold)."""
    n = x.shape[0]
    d2 = pairwise_sq_distances(x)
    d2.fill_diagonal_(float("inf"))
    k = n - f - 2
    return d2.topk(k, dim=1, largest=False).values.sum(dim=1) if k > 0 else torch.zeros(n, dtype=d2.dtype, device=d2.device)


def krum(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017): the row with the lowest score

        score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖²,  N_i = the n − f − 2 nearest rows to x_i.

    Needs n >= 2f + 3. Ties go to the lowest index.
    """
    x = _rows(x, "krum")
    _check_f("krum", f, x.shape[0], 2 * f + 3)
    return x[int(torch.argmin(krum_scores(x, f=f)))].clone()


def multi_krum(x: torch.Tensor, *, f: int, m: int | None = None) -> torch.Tensor:
    """Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018): the mean of the m rows with the
    lowest Krum scores; m defaults to n − f. ``m = 1`` is Krum."""
    x = _rows(x, "multi_krum")
    n = x.shape[0]
    _check_f("multi_krum", f, n, 2 * f + 3)
    m = n - f if m is None or m == 0 else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise ValueError(f"multi_krum: m must be an int in [1, n={n}]. Got {m!r} instead.")
    order = torch.argsort(krum_scores(x, f=f), stable=True)[:m]
    return x[order].to(torch.float64).mean(dim=0).to(x.dtype)


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Rule:
    """A registry entry: the callable, the ``aggregator.*`` config keys it takes as keyword
    arguments, and the fewest rows it needs for a given f (None: any number)."""

    fn: Callable[..., torch.Tensor]
    params: tuple[str, ...] = ()
    min_rows: Callable[[int], int] | None = None

    def largest_f(self, n: int) -> int:
        """The largest f this rule tolerates among n rows."""
        if self.min_rows is None:
            return n
        f = 0
        while self.min_rows(f + 1) <= n:
            f += 1
        return f


#: config name -> rule
AGGREGATORS: dict[str, Rule] = {
    "mean": Rule(mean),
    "median": Rule(median),
    "trimmed_mean": Rule(trimmed_mean, ("f",), lambda f: 2 * f + 1),
    "geometric_median": Rule(geometric_median, ("tol", "max_iter", "eps")),
    "krum": Rule(krum, ("f",), lambda f: 2 * f + 3),
    "multi_krum": Rule(multi_krum, ("f", "m"), lambda f: 2 * f + 3),
}
