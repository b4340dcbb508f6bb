"""Coordinate-wise selection in column blocks: the median, the values nearest it, the band each row falls in.

The coordinate-wise rules (median, trimmed mean, Bulyan's second stage, centered clipping's start) select
among the n values of each coordinate. Done on the whole (n, d) matrix at once, a selection sorts or copies
n·d values in float64 and runs at memory speed many times over. Here the columns are processed in blocks of
about 2¹⁸ values, so that each block, in float64 where it matters, stays in cache while every step of the
selection runs on it; each selection is an O(n) partial partition per column (introselect: ``numpy.partition``
on the CPU, several times faster than ``torch.kthvalue`` there, ``benchmarks/aggregator_parts.py``; a sort on
other devices), not a full sort.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["block_columns", "column_blocks", "combine_rows", "median_columns", "nearest_to_median_mean", "partition_columns"]


def block_columns(n: int) -> int:
    """Columns per block: ~2¹⁸ values (2 MiB in float64), at least 256."""
    return max(256, (1 << 18) // max(n, 1))


def combine_rows(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Σ_i w_i x_i in float64, one GEMV per block of columns (no float64 copy of x), in ``dtype`` (default
    x's)."""
    n, d = x.shape
    w = w.to(device=x.device, dtype=torch.float64)
    out = torch.empty(d, dtype=dtype or x.dtype, device=x.device)
    for c, block in column_blocks(x, 4 * block_columns(n), torch.float64):
        out[c:c + block.shape[1]] = w @ block
    return out


def column_blocks(x: torch.Tensor, cols: int, dtype: torch.dtype | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(first column, block) for each block of ``cols`` columns of x, the block copied into one buffer of
    ``dtype`` (default x's) that every block reuses: no allocation per block, which on the CPU costs more
    than the copy. A block is valid until the next one is drawn; the caller may change it in place."""
    n, d = x.shape
    buf = torch.empty(n, max(min(cols, d), 1), dtype=dtype or x.dtype, device=x.device)
    for c in range(0, d, cols):
        block = buf[:, :min(cols, d - c)]
        block.copy_(x[:, c:c + cols])
        yield c, block


def partition_columns(s: torch.Tensor, kth: int, *, inplace: bool = False) -> torch.Tensor:
    """Each column of s (m, b) rearranged so that position ``kth`` holds the column's (kth+1)-th smallest
    value, smaller-or-equal values before it and larger-or-equal after (``numpy.partition`` on the CPU, in
    s itself with ``inplace``; sorted columns elsewhere, which satisfy the same). One kth per call: numpy's
    several-kth partition is several times slower than as many calls."""
    if s.device.type == "cpu" and s.dtype in (torch.float32, torch.float64, torch.float16):
        if inplace:
            s.numpy().partition(kth, axis=0)
            return s
        return torch.from_numpy(np.partition(s.numpy(), kth, axis=0))
    ordered = s.sort(dim=0).values                  # other devices and dtypes numpy lacks (bfloat16)
    return s.copy_(ordered) if inplace else ordered


def _middle(s: torch.Tensor, *, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The two middle values of each column of s (m, b), v_(⌈m/2⌉) and v_(⌊m/2⌋+1) (equal for odd m): one
    partition at the lower middle (in s with ``inplace``), then the smallest value above it for even m."""
    m = s.shape[0]
    k = (m - 1) // 2
    part = partition_columns(s, k, inplace=inplace)
    lo = part[k].clone()
    return (lo, lo) if m % 2 else (lo, part[k + 1:].amin(dim=0))


def median_columns(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The coordinate-wise median of x (n, d), in x's dtype (for even n the average of the two middle values,
    taken in float64 and rounded once), and the values it takes, (1, d) for odd n and (2, d) for even n."""
    n, d = x.shape
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    mid = torch.empty(1 if n % 2 else 2, d, dtype=x.dtype, device=x.device)
    cols = block_columns(n)
    for c, block in column_blocks(x, cols):
        lo, hi = _middle(block, inplace=True)
        mid[0, c:c + cols] = lo
        if n % 2:
            out[c:c + cols] = lo
        else:
            mid[1, c:c + cols] = hi
            out[c:c + cols] = (0.5 * lo.to(torch.float64) + 0.5 * hi.to(torch.float64)).to(x.dtype)
    return out, mid


def nearest_to_median_mean(x: torch.Tensor, rows: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per coordinate j, with m_j the coordinate-wise median of the selected rows S = x[rows] (float64), the
    mean of the ``keep`` values of S nearest m_j (ties: the lower position in ``rows``), in x's dtype; and the
    fraction of coordinates each row of S shares in (its value within the kept values' range, the uses of a
    coordinate shared among the rows there), (|S|,) float64. Bulyan's coordinate stage."""
    m, d = len(rows), x.shape[1]
    point = torch.empty(d, dtype=x.dtype, device=x.device)
    used = torch.zeros(m, dtype=torch.float64, device=x.device)
    if d == 0:
        return point, torch.full((m,), keep / m, dtype=torch.float64, device=x.device)
    cols = block_columns(m)
    inf = float("inf")
    f64 = dict(dtype=torch.float64, device=x.device)
    s_buf, dist_buf, part_buf = (torch.empty(m, min(cols, d), **f64) for _ in range(3))   # reused: no
    kept_buf = torch.empty(m, min(cols, d), dtype=torch.bool, device=x.device)           # page faults
    sel_buf = torch.empty(m, min(cols, d), dtype=x.dtype, device=x.device)
    for c in range(0, d, cols):
        w = min(cols, d - c)
        s, dist, part, kept = s_buf[:, :w], dist_buf[:, :w], part_buf[:, :w], kept_buf[:, :w]
        s.copy_(torch.index_select(x[:, c:c + w], 0, rows, out=sel_buf[:, :w]))
        part.copy_(s)
        lo, hi = _middle(part, inplace=True)
        torch.sub(s, 0.5 * lo + 0.5 * hi, out=dist).abs_()
        part.copy_(dist)
        t = partition_columns(part, keep - 1, inplace=True)[keep - 1]   # the keep-th smallest distance
        torch.le(dist, t, out=kept)
        if bool((kept.sum(dim=0) == keep).all()):              # no tie at t beyond the keep values: the
            point[c:c + w] = (torch.mul(s, kept, out=part).sum(dim=0) / keep).to(x.dtype)   # band is the
            used += kept.sum(dim=1)                                                         # kept values
            continue
        below, tied = dist < t, dist == t
        kept = below | (tied & (tied.cumsum(dim=0) <= keep - below.sum(dim=0)))
        point[c:c + w] = (torch.where(kept, s, 0.0).sum(dim=0) / keep).to(x.dtype)
        low = torch.where(kept, s, inf).amin(dim=0)
        high = torch.where(kept, s, -inf).amax(dim=0)
        inband = (s >= low) & (s <= high)
        share = keep / inband.sum(dim=0).clamp_min(1).to(torch.float64)
        used += torch.mv(inband.to(torch.float64), share)
    return point, used / d
