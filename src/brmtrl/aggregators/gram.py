"""Distances between rows from one Gram matrix about a central row (float64, overflow-safe)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from .base import _chunk, _rows
from . import kernels
from .columns import column_blocks

__all__ = ["pairwise_sq_distances"]


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
_U64 = 2.0 ** -53


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
    h: np.ndarray | None = None   # (n,) <x_i − x_k, e − x_k> for an extra point e, when asked (no rescaling)
    r: np.ndarray | None = None   # (n,) error radii: |ΔG_ij| ≲ γ r_i r_j; None: r_i = ‖y_i‖ (a Gram of rows)


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
    r: np.ndarray        # (n,) error radii in these units (|ΔG_ij| ≲ γ r_i r_j); a, for a Gram of rows


def _first_centre(x: torch.Tensor) -> int:
    """A row near the bulk: the row nearest the coordinate-wise median of a column sample (16 evenly spread
    blocks of 16 columns; all columns if d ≤ 256). Cheap (n × 256 values) and right for any attack that
    does not single out the sampled columns; :func:`_central_gram` checks it either way."""
    n, d = x.shape
    if n <= 2 or d == 0:
        return 0
    s = x if d <= _SAMPLE_BLOCKS * _SAMPLE_WIDTH else x[:, _sample_columns(d).to(x.device)]
    s = s.to(torch.float64).cpu().numpy() * 0.5        # halves: no difference overflows; numpy: small arrays
    diff = s - np.partition(s, (n - 1) // 2, axis=0)[(n - 1) // 2]       # the lower median
    big = np.abs(diff).max(axis=1)
    r = np.linalg.norm(diff / np.where(big > 0, big, 1.0)[:, None], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        key = np.nan_to_num(np.log2(big) + np.log2(r), nan=math.inf)   # log2 of the distance, no overflow
    return int(np.argmin(key))


@lru_cache(maxsize=64)
def _sample_columns(d: int) -> torch.Tensor:
    """The columns :func:`_first_centre` reads: ``_SAMPLE_BLOCKS`` evenly spread blocks of ``_SAMPLE_WIDTH``."""
    starts = np.linspace(0, d - _SAMPLE_WIDTH, _SAMPLE_BLOCKS).astype(np.int64)
    return torch.from_numpy((starts[:, None] + np.arange(_SAMPLE_WIDTH)).reshape(-1))


def _gram_about(x: torch.Tensor, k: int, extra: torch.Tensor | None = None,
                work: torch.dtype | None = None) -> _Gram:
    """G = (X − x_k)(X − x_k)ᵀ in one pass: column blocks centred in the input's precision (``work``: in
    that dtype instead, e.g. float64 for float32 rows), each block's GEMM in that precision, summed in
    float64. If an entry overflows (or exceeds 2^900) the pass is redone in float64 with each row scaled by
    a power of two (:func:`_gram_rescaled`). ``extra``: a point e (d,) in x's dtype whose column
    h_i = <x_i − x_k, e − x_k> comes from the same blocks (None after the rescaled pass). With few rows on
    the CPU the compiled kernel does the same in one pass, without the centred copy
    (:func:`kernels.centred_gram`: dot products over 256 columns, at least as precise)."""
    n, d = x.shape
    step = _chunk(n)
    work = x.dtype if work is None else work
    if work in (torch.float32, torch.float64) and kernels.usable(x):   # few rows: compiled
        full = kernels.centred_gram(x, k, None if extra is None else extra.to(x.dtype), work)
        gh, hh = np.ascontiguousarray(full[:n, :n]), None if extra is None else full[:n, n].copy()
        # its error is within the GEMM path's (tests/test_kernels.py): the same γ, so the same decisions
    else:
        g = torch.zeros(n, n, dtype=torch.float64, device=x.device)
        h = None if extra is None else torch.zeros(n, dtype=torch.float64, device=x.device)
        for start, c in column_blocks(x, step, work):      # one reused buffer, centred in place
            if extra is not None:
                u = extra[start:start + step].to(work) - c[k]
            c.sub_(c[k].clone())
            g += (c @ c.T).to(torch.float64)
            if h is not None:
                h += (c @ u).to(torch.float64)
        gh, hh = g.cpu().numpy(), None if h is None else h.cpu().numpy()
    if np.isfinite(gh).all() and float(np.abs(gh).max(initial=0.0)) <= _FAST_LIMIT:
        u = torch.finfo(work).eps / 2
        return _Gram(gh, np.zeros(n, np.int64), k, _gamma(u, min(step, max(d, 1)), -(-d // step)), hh)
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
        r = a if gr.r is None else np.maximum(dd * gr.r, a)
    return _Units(g, a, dd, e, capped, r)


def _off_centre(gr: _Gram, un: _Units) -> int | None:
    """None if the centre x_k is central: ‖x_m − x_k‖ ≤ 3 q_m for the medoid m, q_i the median distance of
    row i to the others (upper bounds, rounding included). Otherwise m, the row to re-centre on: then the
    distances among the rows near m are ≳ γ‖x_m − x_k‖², still resolved well enough to find m."""
    n = len(un.a)
    if n <= 2:
        return None
    diag, a, r = np.diagonal(un.g), un.a, un.r
    with np.errstate(over="ignore", invalid="ignore"):
        hi = np.sqrt(np.maximum(diag[:, None] + diag[None, :] - 2.0 * un.g, 0.0)
                     + gr.gamma * (r[:, None] + r[None, :]) ** 2)
    np.fill_diagonal(hi, np.inf)
    q = np.partition(hi, (n - 1) // 2, axis=1)[:, (n - 1) // 2]
    if not np.isfinite(q).all():
        return None
    m = int(np.argmin(q))
    return None if m == gr.k or a[m] <= 3.0 * q[m] else m


def _central_gram(x: torch.Tensor, floor: float = 0.0, extra: torch.Tensor | None = None,
                  work: torch.dtype | None = None) -> tuple[_Gram, _Units]:
    """The Gram matrix about a central row: :func:`_first_centre`, then re-centred on the medoid while
    :func:`_off_centre` says so (one more pass each; at most ``_MAX_PASSES`` passes). ``extra``, ``work``:
    as for :func:`_gram_about`, its column about the final centre."""
    return _recentred(lambda k: _gram_about(x, k, extra, work), _first_centre(x), floor)


def _recentred(gram_about: Callable[[int], _Gram], first: int, floor: float = 0.0) -> tuple[_Gram, _Units]:
    """``gram_about(first)``, re-centred on the medoid while :func:`_off_centre` says so (at most
    ``_MAX_PASSES`` Grams)."""
    gr = gram_about(first)
    un = _units(gr, floor)
    for _ in range(_MAX_PASSES - 1):
        m = _off_centre(gr, un)
        if m is None:
            break
        gr = gram_about(m)
        un = _units(gr, floor)
    return gr, un


def _sq_distances(gr: _Gram) -> np.ndarray:
    """‖y_i − y_j‖² (n, n) from a Gram about one of the rows (see :func:`pairwise_sq_distances`)."""
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
    return d2


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
    return torch.from_numpy(_sq_distances(gr)).to(x.device)

