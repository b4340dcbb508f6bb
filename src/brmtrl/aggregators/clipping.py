"""Centered clipping (Karimireddy, He & Jaggi, "Learning from History for Byzantine Robust Optimization",
ICML 2021)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .averages import _median
from .base import AggregateResult, _check_float, _check_int, _rows
from .columns import combine_rows
from .gram import _central_gram


def _columns(n: int) -> int:
    """Columns per block: ~2^20 float64 entries (8 MiB), so that a block's temporaries stay small."""
    return max(1024, (1 << 20) // max(n, 1))

__all__ = ["automatic_tau", "centered_clipping", "centered_clipping_trusted"]


def automatic_tau(distances: torch.Tensor, start: torch.Tensor) -> float:
    """The automatic clipping radius: the median of the rows' distances to the start point v₀. When that
    median is 0, at least half the rows sit exactly on v₀ (duplicates, as NNM or bucketing make them):
    their spread gives no scale, and a radius taken from the other rows' distances would let those rows
    through unclipped, however far they are. τ is then ‖v₀‖, the size of the update the majority agrees
    on, so that every other row moves v by at most ‖v₀‖/n per step and is counted in part rather than
    dropped; if v₀ is 0 as well, τ = 1e-12 (v stays where the majority is). Always > 0: with τ = 0 every
    row off v₀ would be clipped to nothing and flagged, honest or not."""
    r = distances.cpu().numpy()
    tau = float(np.median(r))
    if tau > 0:
        return tau
    scale = float(torch.linalg.vector_norm(start.to(torch.float64)))
    return scale if math.isfinite(scale) and scale > 0 else 1e-12


def _on_gram(x: torch.Tensor, v0: torch.Tensor, tau: float, iters: int) -> AggregateResult | None:
    """Centered clipping on the Gram matrix of the rows and v₀: every iterate is an affine combination
    v = Σ_j c_j y_j of y = (x_1, …, x_n, v₀) (v ← (1 − Σ_i s_i/n) v + Σ_i (s_i/n) x_i), so with G the Gram
    matrix of y about a central row x_k (:mod:`brmtrl.aggregators.gram`: the rows' and v₀'s column in the
    same pass, float64 sums of blocks centred in the input's precision, the precision it documents)
    ‖x_i − v‖² = G_ii − 2 (Gc)_i + cᵀGc and each iteration is O(n²); the point is one pass, Σ_j c_j y_j in
    float64. None when the Gram needs the overflow guard's rescaled rows (rows near float64's range): the
    caller then iterates on the rows. v₀ must be a value of x's dtype."""
    n, d = x.shape
    v0x = v0.to(x.dtype)
    gr, _ = _central_gram(x, extra=v0x)             # v₀'s column from the same blocks; None if rescaled
    if gr.h is None or not np.isfinite(gr.g).all():
        return None
    k = gr.k
    u = v0x - x[k]                                  # v₀ − x_k, centred as the Gram's blocks are
    g = np.zeros((n + 1, n + 1))
    g[:n, :n] = gr.g
    g[:n, n] = g[n, :n] = gr.h
    g[n, n] = float(torch.linalg.vector_norm(u.to(torch.float64)) ** 2)
    if not np.isfinite(g).all():
        return None
    diag = np.diagonal(g)[:n]

    def gaps(c: np.ndarray) -> np.ndarray:
        gc = g @ c
        return np.sqrt(np.maximum(diag - 2.0 * gc[:n] + float(c @ gc), 0.0))

    c = np.zeros(n + 1)
    c[n] = 1.0
    r = gaps(c)
    if tau == 0.0:
        tau = automatic_tau(torch.from_numpy(r), v0)
    scale = np.ones(n)
    for it in range(iters):
        with np.errstate(divide="ignore"):
            scale = np.where(r > tau, tau / np.where(r > 0, r, 1.0), 1.0)
        c = c * (1.0 - scale.sum() / n)
        c[:n] += scale / n
        if it + 1 < iters:
            r = gaps(c)
    point = combine_rows(x, torch.from_numpy(c[:n]), torch.float64) + float(c[n]) * v0.to(torch.float64)
    return AggregateResult(point.to(x.dtype), torch.from_numpy(scale).to(x.device), {"tau": tau})


def centered_clipping(x: torch.Tensor, *, tau: float = 0.0, iters: int = 3,
                      centre: torch.Tensor | None = None) -> torch.Tensor:
    """Centered clipping (Karimireddy, He & Jaggi, ICML 2021): from a start point v_0, ``iters`` times

        v ← v + (1/n) Σ_i clip_τ(x_i − v),   clip_τ(u) = u · min(1, τ / ‖u‖).

    Symbols: x_i the n rows, v the estimate, τ = ``tau`` the clipping radius, L = ``iters``. Each step
    moves v by at most τ per row, so f far rows move it by at most fτ/n per step whatever they hold.

    ``centre`` is v_0. The paper starts from the previous round's aggregate (server momentum); this
    stateless default is the coordinate-wise median of the rows (robust, needs no history); pass the
    previous aggregate to follow the paper. ``tau = 0`` (default) chooses τ automatically: the median of
    the distances ‖x_i − v_0‖, so that about half the rows are clipped in the first step whatever the
    scale of the updates (‖v₀‖ when that median is 0: :func:`automatic_tau`). Rows up to float64's range
    are handled; the result is in the input's dtype. Cost: the median (a sort of each coordinate's n
    values, in column blocks), then one Gram matrix of the rows and v₀ and one pass to combine them,
    whatever L (:func:`_on_gram`);
    rows near float64's range: L + 1 passes over the rows instead (each step and the next step's distances
    share one pass), on halved differences rescaled by their largest entry.
    """
    return centered_clipping_trusted(x, tau=tau, iters=iters, centre=centre).point


def centered_clipping_trusted(x: torch.Tensor, *, tau: float = 0.0, iters: int = 3,
                              centre: torch.Tensor | None = None) -> AggregateResult:
    """:func:`centered_clipping` and each row's trust min(1, τ/‖x_i − v‖) at the last iteration (the
    fraction of the row's difference that was counted; 1 within τ). ``info['tau']``: the τ used."""
    x = _rows(x, "centered_clipping")
    n, d = x.shape
    tau = _check_float("centered_clipping", "tau", tau, zero_ok=True)
    iters = _check_int("centered_clipping", "iters", iters, 1)
    if centre is None:
        v = _median(x)[0].to(torch.float64)
    else:
        if not isinstance(centre, torch.Tensor) or centre.shape != (d,) or not centre.is_floating_point() \
                or not bool(torch.isfinite(centre).all()):
            got = (f"a {centre.dtype} tensor of shape {tuple(centre.shape)}" if isinstance(centre, torch.Tensor)
                   else repr(centre))
            raise ValueError(f"centered_clipping: centre must be a finite floating-point tensor of shape ({d},). "
                             f"Got {got} instead.")
        v = centre.to(device=x.device, dtype=torch.float64)
    fast = _on_gram(x, v, tau, iters) if centre is None or bool((v.to(x.dtype).to(torch.float64) == v).all()) else None
    if fast is not None:
        return fast
    cols = _columns(n)

    def scaled_gaps(blocks: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """‖x_i − v‖ (inf beyond float64's range) from the column blocks' halved differences u = (x − v)/2,
        the norms combined with a running scale (as LAPACK's nrm2), so that no square overflows: the
        guard, taken when the plain sum of squares overflows."""
        big = torch.zeros(n, dtype=torch.float64, device=x.device)
        ssq = torch.zeros(n, dtype=torch.float64, device=x.device)
        for c, v_c in blocks:
            u = x[:, c:c + cols].to(torch.float64) * 0.5 - 0.5 * v_c
            m = u.abs().amax(dim=1)
            grow = m > big
            ratio = torch.where(grow, big / torch.where(grow, m, 1.0), torch.ones_like(big))
            ssq = torch.where(grow, ssq * ratio * ratio, ssq)
            big = torch.maximum(big, m)
            ssq = ssq + ((u / torch.where(big > 0, big, 1.0)[:, None]) ** 2).sum(dim=1)
        return 2.0 * big * ssq.sqrt()

    def blocks_of(v: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        return [(c, v[c:c + cols]) for c in range(0, d, cols)]

    def sweep(v: torch.Tensor, scale: torch.Tensor | None, gaps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass over x's column blocks: v' = v + (1/n) Σ_i scale_i (x_i − v) (v' = v without ``scale``),
        and, with ``gaps``, ‖x_i − v'‖ from the same blocks while they are in cache (sums of squares in
        float64; :func:`scaled_gaps` if they overflow)."""
        out = v.clone()
        ssq = torch.zeros(n, dtype=torch.float64, device=x.device)
        w = None if scale is None else (2.0 * scale / n)[:, None]
        for c in range(0, d, cols):
            xb = x[:, c:c + cols].to(torch.float64)
            if w is not None:                      # halved differences: no overflow up to float64's range
                out[c:c + cols] += ((xb * 0.5 - 0.5 * v[c:c + cols]) * w).sum(dim=0)
            if gaps:
                ssq += ((xb - out[c:c + cols]) ** 2).sum(dim=1)
        if not gaps:
            return out, None
        r = ssq.sqrt()
        return out, (r if bool(torch.isfinite(r).all()) else scaled_gaps(blocks_of(out)))

    v, r = sweep(v, None, True)
    assert r is not None
    if tau == 0.0:
        tau = automatic_tau(r, v)
    scale = torch.ones_like(r)
    for it in range(iters):
        scale = torch.where(r > tau, tau / r, torch.ones_like(r))
        v, gaps = sweep(v, scale, it + 1 < iters)    # the next step's distances in the same pass
        r = gaps if gaps is not None else r
    return AggregateResult(v.to(x.dtype), scale, {"tau": tau})
