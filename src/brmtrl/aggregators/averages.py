"""The mean and the coordinate-wise median and trimmed mean (Yin, Chen, Ramchandran & Bartlett, ICML 2018)."""

from __future__ import annotations

import torch

from .base import AggregateResult, _band_used, _check_f, _rows, _share_trust
from .columns import block_columns, block_ranks, block_runs, combine_rows, compiled_rows, median_columns, rank_work

__all__ = ["mean", "mean_trusted", "median", "median_trusted", "trimmed_mean", "trimmed_mean_trusted"]


def mean(x: torch.Tensor) -> torch.Tensor:
    """Arithmetic mean x̄ = (1/n) Σ_i x_i (plain FedRep / FedAvg with equal weights). Not robust."""
    x = _rows(x, "mean")
    if x.dtype == torch.float64:                  # what the server step passes: no copy to avoid
        return x.mean(dim=0)
    return combine_rows(x, torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64))


def mean_trusted(x: torch.Tensor) -> AggregateResult:
    """:func:`mean`; every row is fully counted (trust 1)."""
    point = mean(x)
    return AggregateResult(point, torch.ones(x.shape[0], dtype=torch.float64, device=x.device))


def _median(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The coordinate-wise median and the values it takes, (1, d) for odd n, (2, d) for even n."""
    return median_columns(x)


def median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (Yin, Chen, Ramchandran & Bartlett, ICML 2018): per coordinate, with
    v_(1) ≤ … ≤ v_(n) the sorted values, v_((n+1)/2) for odd n and (v_(n/2) + v_(n/2+1)) / 2 for even n
    (the average is taken in float64 and rounded once to the input's dtype)."""
    x = _rows(x, "median")
    return _median(x)[0]


def median_trusted(x: torch.Tensor) -> AggregateResult:
    """:func:`median` and each row's trust: the fraction u_i of coordinates where the row's value is the
    median (one of the two middle values for even n; rows tied with it share the use), relative to a
    row's fair share k/n (k = 1 or 2 values used per coordinate) and capped at 1: trust_i = min(1, u_i n / k)."""
    x = _rows(x, "median")
    n = x.shape[0]
    point, mid = _median(x)
    k = mid.shape[0]
    return AggregateResult(point, _share_trust(_band_used(x, mid[0], mid[-1], k), k, n))


def trimmed_mean(x: torch.Tensor, *, f: int = 0) -> torch.Tensor:
    """Coordinate-wise trimmed mean: per coordinate drop the f largest and f smallest values, average
    the rest (Yin et al., ICML 2018). Needs n >= 2f + 1."""
    return trimmed_mean_trusted(x, f=f).point


def trimmed_mean_trusted(x: torch.Tensor, *, f: int = 0) -> AggregateResult:
    """:func:`trimmed_mean` and each row's trust: the fraction u_i of coordinates where the row's value was
    kept (not among the f largest or f smallest; rows tied with a kept value share its use), relative to
    the fair share (n − 2f)/n, capped at 1."""
    x = _rows(x, "trimmed_mean")
    n, d = x.shape
    _check_f("trimmed_mean", f, n, 2 * f + 1)
    point = torch.empty(d, dtype=x.dtype, device=x.device)
    lo = torch.empty(d, dtype=x.dtype, device=x.device)      # the band's edges: values of x
    hi = torch.empty_like(lo)
    cols = block_columns(n)
    compiled = compiled_rows(x, n)

    def run(starts: range) -> None:                # column blocks, in cache: the kept ranks f … n − f − 1
        kept = torch.empty(n - 2 * f, min(cols, d), dtype=x.dtype, device=x.device)   # reused: no page faults
        work = None if compiled else rank_work(x, cols)
        for c in starts:
            w = min(cols, d - c)
            s = block_ranks(x, slice(c, c + w), slice(f, n - f), kept, work=work, compiled=compiled)
            point[c:c + w] = (s.sum(dim=0, dtype=torch.float64) / (n - 2 * f)).to(x.dtype)
            lo[c:c + w], hi[c:c + w] = s[0], s[-1]

    block_runs(x, cols, n * d, run)                # the blocks shared among torch's threads on large x
    used = _band_used(x, lo, hi, n - 2 * f)
    return AggregateResult(point, _share_trust(used, n - 2 * f, n), {"f_used": f})
