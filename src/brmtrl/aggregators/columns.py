"""Coordinate-wise selection in column blocks: the median, the values nearest it, the band each row falls in.

The coordinate-wise rules (median, trimmed mean, Bulyan's second stage, centered clipping's start) select
among the n values of each coordinate. Done on the whole (n, d) matrix at once, a selection sorts or copies
n·d values in float64 and runs at memory speed many times over. Here the columns are processed in blocks of
about 2¹⁸ values, so that each block, in float64 where it matters, stays in cache while every step of the
selection runs on it; each selection is an O(n) ``kthvalue`` per column, not a sort.
"""

from __future__ import annotations

import torch

__all__ = ["block_columns", "median_columns", "nearest_to_median_mean"]


def block_columns(n: int) -> int:
    """Columns per block: ~2¹⁸ values (2 MiB in float64), at least 256."""
    return max(256, (1 << 18) // max(n, 1))


def _middle(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two middle values of each column of s (m, b), v_(⌈m/2⌉) and v_(⌊m/2⌋+1) (equal for odd m), by one
    ``kthvalue`` and one masked minimum (duplicates of the lower middle count: with c values ≤ it, the upper
    middle is the same value when c ≥ ⌊m/2⌋ + 1)."""
    m = s.shape[0]
    lo = s.kthvalue((m + 1) // 2, dim=0).values
    if m % 2:
        return lo, lo
    at_most = (s <= lo).sum(dim=0)
    above = torch.where(s > lo, s, torch.full_like(s, float("inf"))).amin(dim=0)
    return lo, torch.where(at_most >= m // 2 + 1, lo, above)


def median_columns(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The coordinate-wise median of x (n, d), in x's dtype (for even n the average of the two middle values,
    taken in float64 and rounded once), and the values it takes, (1, d) for odd n and (2, d) for even n."""
    n, d = x.shape
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    mid = torch.empty(1 if n % 2 else 2, d, dtype=x.dtype, device=x.device)
    cols = block_columns(n)
    for c in range(0, d, cols):
        lo, hi = _middle(x[:, c:c + cols])
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
    for c in range(0, d, cols):
        s = x[rows, c:c + cols].to(torch.float64)
        lo, hi = _middle(s)
        dist = (s - (0.5 * lo + 0.5 * hi)).abs()
        t = dist.kthvalue(keep, dim=0).values                   # the keep-th smallest distance
        below, tied = dist < t, dist == t
        kept = below | (tied & (tied.cumsum(dim=0) <= keep - below.sum(dim=0)))
        point[c:c + cols] = (torch.where(kept, s, 0.0).sum(dim=0) / keep).to(x.dtype)
        low = torch.where(kept, s, inf).amin(dim=0)
        high = torch.where(kept, s, -inf).amax(dim=0)
        inband = (s >= low) & (s <= high)
        share = keep / inband.sum(dim=0).clamp_min(1).to(torch.float64)
        used += (inband.to(torch.float64) * share).sum(dim=1)
    return point, used / d
