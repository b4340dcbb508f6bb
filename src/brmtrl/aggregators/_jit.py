"""The compiled kernels (Numba ``njit``), imported only through :mod:`.kernels`, which says when each runs.

Each kernel walks the columns in tiles of ``TILE`` columns held in cache (L1 for 16 rows of float64, L2 for
the selections' up to 1024 rows), in one pass over its input. The
selections (:func:`select_ranks`, :func:`nearest_to_median`) copy a tile's rows in, sort each column by the
same comparator network as :func:`brmtrl.aggregators.columns.network_sort` (each comparator a min and a max
of two tile rows, which LLVM turns into SIMD instructions) and compute everything a rule needs while the
tile is in cache, with the same arithmetic in the same order as the numpy path (no fast-math, no fused
multiply-add): the same bits. :func:`centred_gram` and :func:`combine_rows` compute the same sums as a GEMM
and a GEMV in another order. Compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

TILE = 256   # columns per tile: 16 rows of float64 are 32 KiB


@njit(cache=True, nogil=True, boundscheck=False)
def _load_sorted(x, rows, pairs, j0, w, buf):   # pragma: no cover - compiled
    """buf[:, :w] ← x[rows, j0:j0 + w], each column sorted by the comparators ``pairs``."""
    for r in range(rows.size):
        src = x[rows[r], j0:j0 + w]
        dst = buf[r]
        for c in range(w):
            dst[c] = src[c]
    for p in range(pairs.shape[0]):
        lo = buf[pairs[p, 0]]
        hi = buf[pairs[p, 1]]
        for c in range(w):
            a = lo[c]
            b = hi[c]
            lo[c] = min(a, b)
            hi[c] = max(a, b)


@njit(cache=True, nogil=True, boundscheck=False)
def select_ranks(x, rows, pairs, r0, r1, c0, c1, out, o0):   # pragma: no cover - compiled
    """out[r − r0, j − c0 + o0] = the r-th smallest of x[rows, j], r0 ≤ r < r1, c0 ≤ j < c1 (``pairs``: a
    network that puts those ranks in place)."""
    buf = np.empty((rows.size, TILE), x.dtype)
    for j0 in range(c0, c1, TILE):
        w = min(TILE, c1 - j0)
        _load_sorted(x, rows, pairs, j0, w, buf)
        for r in range(r0, r1):
            src = buf[r]
            dst = out[r - r0, j0 - c0 + o0:j0 - c0 + o0 + w]
            for c in range(w):
                dst[c] = src[c]


@njit(cache=True, nogil=True, boundscheck=False)
def nearest_to_median(x, rows, keep, pairs, c0, c1, point, used, ok):   # pragma: no cover - compiled
    """Bulyan's coordinate stage where it has no ties (see ``columns.nearest_to_median_mean``): per column j
    (c0 ≤ j < c1),
    m_j = ½ v_(k) + ½ v_(k') (float64), t_j = the least over the windows of ``keep`` consecutive sorted values
    that hold the middle of their farther end's distance to m_j, and the rows with |x_ij − m_j| ≤ t_j. Where
    exactly ``keep`` rows are within t_j (ok[j]), point[j] = their sum in row order / keep and each of them
    counts 1 in ``used``; elsewhere ok[j] is False and the caller takes the exact path."""
    m = rows.size
    k = (m - 1) // 2
    kk = k + 1 - m % 2
    s_lo = max(0, k - keep + 1)
    s_hi = min(k + 1 if m % 2 == 0 else k, m - keep)
    buf = np.empty((m, TILE), x.dtype)
    med = np.empty(TILE)
    t = np.empty(TILE)
    acc = np.empty(TILE)
    cnt = np.empty(TILE, np.int64)
    for j0 in range(c0, c1, TILE):
        w = min(TILE, c1 - j0)
        _load_sorted(x, rows, pairs, j0, w, buf)
        bk = buf[k]
        bkk = buf[kk]
        for c in range(w):
            med[c] = 0.5 * np.float64(bk[c]) + 0.5 * np.float64(bkk[c])
            t[c] = np.inf
            acc[c] = 0.0
            cnt[c] = 0
        for s in range(s_lo, s_hi + 1):
            first = buf[s]
            last = buf[s + keep - 1]
            for c in range(w):
                t[c] = min(t[c], max(med[c] - np.float64(first[c]), np.float64(last[c]) - med[c]))
        for r in range(m):
            src = x[rows[r], j0:j0 + w]
            for c in range(w):
                v = np.float64(src[c])
                within = abs(v - med[c]) <= t[c]
                acc[c] += v if within else 0.0
                cnt[c] += within
        for c in range(w):
            ok[j0 + c] = cnt[c] == keep
            point[j0 + c] = acc[c] / keep
        for r in range(m):
            src = x[rows[r], j0:j0 + w]
            n_in = 0
            for c in range(w):
                n_in += (abs(np.float64(src[c]) - med[c]) <= t[c]) & (cnt[c] == keep)
            used[r] += n_in


@njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc"})
def _dot(a, b, w, zero):   # pragma: no cover - compiled
    """Σ_c a[c] b[c] over c < w in a's precision; reassociation lets LLVM keep one partial sum per SIMD lane."""
    s = zero
    for c in range(w):
        s += a[c] * b[c]
    return s


@njit(cache=True, nogil=True, boundscheck=False)
def centred_gram(x, k, e, buf, zero, g):   # pragma: no cover - compiled
    """g += the Gram matrix of the rows of [x; e] minus x[k] (e: one more row, or empty), in tiles of
    ``TILE`` columns: each tile's rows are centred in buf's precision (the working precision: x's, or
    float64 for float32 rows) into buf (≥ rows, TILE) and each pair's dot product over the tile, in that
    precision, is added to g in float64. ``zero``: 0 in buf's dtype."""
    n, d = x.shape
    m = n + (e.size > 0)
    for j0 in range(0, d, TILE):
        w = min(TILE, d - j0)
        xk = x[k, j0:j0 + w]
        for r in range(m):
            src = x[r, j0:j0 + w] if r < n else e[j0:j0 + w]
            dst = buf[r]
            for c in range(w):
                dst[c] = src[c]
                dst[c] -= xk[c]
        for i in range(m):
            bi = buf[i]
            for j in range(i + 1):
                g[i, j] += np.float64(_dot(bi, buf[j], w, zero))
    for i in range(m):
        for j in range(i):
            g[j, i] = g[i, j]


@njit(cache=True, nogil=True, boundscheck=False)
def combine_rows(x, w, out):   # pragma: no cover - compiled
    """out[j] = Σ_i w_i x_ij, accumulated in float64 row after row, in tiles of ``TILE`` columns (no float64
    copy of x); stored in out's dtype."""
    n, d = x.shape
    acc = np.empty(TILE)
    for j0 in range(0, d, TILE):
        wd = min(TILE, d - j0)
        for c in range(wd):
            acc[c] = 0.0
        for i in range(n):
            src = x[i, j0:j0 + wd]
            wi = w[i]
            for c in range(wd):
                acc[c] += wi * np.float64(src[c])
        dst = out[j0:j0 + wd]
        for c in range(wd):
            dst[c] = acc[c]


@njit(cache=True, nogil=True, boundscheck=False)
def row_sq_norms(x, out):   # pragma: no cover - compiled
    """out[i] = Σ_j x_ij² in float64: one partial sum per column of a tile (vectorised), added up at the end."""
    n, d = x.shape
    acc = np.empty(TILE)
    for i in range(n):
        for c in range(TILE):
            acc[c] = 0.0
        row = x[i]
        for j0 in range(0, d, TILE):
            w = min(TILE, d - j0)
            for c in range(w):
                v = np.float64(row[j0 + c])
                acc[c] += v * v
        s = 0.0
        for c in range(TILE):
            s += acc[c]
        out[i] = s


@njit(cache=True, nogil=True, boundscheck=False)
def scale_rows(x, scale, out):   # pragma: no cover - compiled
    """out_i = x_i where scale_i is 1, else x_i · scale_i taken in float64 and rounded to out's dtype."""
    n, d = x.shape
    for i in range(n):
        src = x[i]
        dst = out[i]
        s = scale[i]
        if s == 1.0:
            for c in range(d):
                dst[c] = src[c]
        else:
            for c in range(d):
                dst[c] = np.float64(src[c]) * s
