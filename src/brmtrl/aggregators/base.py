"""What every rule shares: the input checks, the result with per-row trust, the registry entry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["FLAG_BELOW", "AggregateResult", "Rule"]

#: a row whose trust is below this is *flagged*: the rule discarded most of it
FLAG_BELOW = 0.5


def _rows(x: torch.Tensor, rule: str) -> torch.Tensor:
    """The one input check every rule shares; the rows come back detached from autograd (the rules select
    and weigh rows: no gradient flows through them, and their CPU kernels work on numpy views)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{rule}: expected a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{rule}: expected a 2-D tensor (one row per client), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{rule}: no rows to aggregate")
    if not x.is_floating_point():
        raise TypeError(f"{rule}: expected a floating-point tensor, got {x.dtype}")
    return x.detach()


def _check_f(rule: str, f: int, n: int, need: int) -> None:
    """``need`` is the smallest n as a function of f: 2f+1 (median-type) or 2f+3 (Krum)."""
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"{rule}: f must be an int >= 0. Got {f!r} instead.")
    if n < need:
        raise ValueError(f"{rule}: cannot tolerate f={f} Byzantine rows among n={n}; it needs n >= {need}")


def _check_int(rule: str, name: str, value: Any, low: int, high: int | None = None) -> int:
    """An int hyperparameter in [low, high], or a ValueError naming it and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        where = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{rule}: {name} must be {where}. Got {value!r} instead.")
    return value


def _check_float(rule: str, name: str, value: Any, *, zero_ok: bool = False) -> float:
    """A finite float hyperparameter > 0 (>= 0 with ``zero_ok``), or a ValueError naming it and the value."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        (value >= 0 if zero_ok else value > 0)
    if not ok:
        raise ValueError(f"{rule}: {name} must be a float {'>=' if zero_ok else '>'} 0. Got {value!r} instead.")
    return float(value)


def _safe_norms(v: torch.Tensor) -> torch.Tensor:
    """Row norms of v (float64) with no square overflowing: ‖v_i‖ = m_i ‖v_i / m_i‖, m_i = max_j |v_ij|."""
    m = v.abs().amax(dim=1)
    return m * torch.linalg.vector_norm(v / torch.where(m > 0, m, 1.0)[:, None], dim=1)


def _band_used(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, kept: int) -> torch.Tensor:
    """For a coordinate-wise rule that combines ``kept`` of the m values of each coordinate, all within
    [lo_j, hi_j]: the fraction of coordinates each row was used in, (m,) float64. A row whose value lies
    in the band shares that coordinate's ``kept`` uses with the other rows there, so that rows tied with a
    kept value (identical rows) share the credit instead of losing it to the order of a sort. Every band
    holds at least ``kept`` values, so a block whose rows count ``kept`` per column in all has no tie at
    its edges: each row in the band has one full use (exact integers). The comparisons run as numpy ufuncs
    on the CPU (a third of torch's time on bool blocks; give lo and hi in v's dtype where they are v's
    values, which avoids a conversion per comparison)."""
    m, d = v.shape
    if d == 0:
        return torch.full((m,), kept / m, dtype=torch.float64, device=v.device)
    used = torch.zeros(m, dtype=torch.float64, device=v.device)
    cols = max(256, (1 << 18) // max(m, 1))                 # column blocks that stay in cache
    width = min(cols, d)
    if v.device.type == "cpu" and v.dtype in (torch.float16, torch.float32, torch.float64) and \
            lo.dtype in (torch.float32, torch.float64) and hi.dtype == lo.dtype:
        va, la, ha = v.detach().numpy(), lo.detach().numpy(), hi.detach().numpy()
        inb, tmp = np.empty((m, width), dtype=bool), np.empty((m, width), dtype=bool)   # reused: no page faults
        for c in range(0, d, cols):
            w = min(cols, d - c)
            blk, ib = va[:, c:c + w], inb[:, :w]
            np.greater_equal(blk, la[c:c + w], out=ib)
            np.logical_and(ib, np.less_equal(blk, ha[c:c + w], out=tmp[:, :w]), out=ib)
            rows = np.count_nonzero(ib, axis=1)
            if int(rows.sum()) == kept * w:
                used += torch.from_numpy(rows)
                continue
            count = torch.from_numpy(np.count_nonzero(ib, axis=0))
            used += torch.mv(torch.from_numpy(ib).to(torch.float64), kept / count.clamp_min(1).to(torch.float64))
        return used / d
    buf = torch.empty(m, width, dtype=torch.bool, device=v.device)
    for c in range(0, d, cols):
        blk = v[:, c:c + cols]
        inband = torch.ge(blk, lo[c:c + cols], out=buf[:, :blk.shape[1]])
        inband &= blk <= hi[c:c + cols]
        count = inband.sum(dim=0)
        if bool((count == kept).all()):
            used += inband.sum(dim=1)
            continue
        used += torch.mv(inband.to(torch.float64), kept / count.clamp_min(1).to(torch.float64))
    return used / d


def _share_trust(used: torch.Tensor, kept: int, rows: int) -> torch.Tensor:
    """Trust from per-coordinate selection: ``used`` (n,) the fraction of coordinates where each row's value
    was among the ``kept`` of ``rows`` values the rule combined, relative to a row's fair share kept/rows,
    capped at 1. A row used as often as an average row has trust 1; one never used, 0."""
    return torch.clamp(used.to(torch.float64) * (rows / kept), max=1.0)


@dataclass(frozen=True)
class AggregateResult:
    """A rule's output: the aggregate ``point`` (d,), in the input's dtype, and ``trust`` (n,) float64 in
    [0, 1], how much of each input row the rule counted (1: fully, 0: discarded). A row with trust below
    :data:`FLAG_BELOW` is *flagged*. ``info``: what else the rule reports (iterations, f used, ...)."""

    point: torch.Tensor
    trust: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> torch.Tensor:
        """Boolean mask of the rows with trust < :data:`FLAG_BELOW`."""
        return self.trust < FLAG_BELOW


def largest_f(min_rows: Callable[[int], int] | None, n: int) -> int:
    """The largest f with ``min_rows(f) <= n`` (n when nothing is needed)."""
    if min_rows is None:
        return n
    f = 0
    while min_rows(f + 1) <= n:
        f += 1
    return f


@dataclass(frozen=True)
class Rule:
    """A registry entry: the callable, the ``aggregator.*`` config keys it takes as keyword
    arguments, the fewest rows it needs for a given f (None: any number), and the same rule
    returning an :class:`AggregateResult` (the point and each row's trust)."""

    fn: Callable[..., torch.Tensor]
    params: tuple[str, ...] = ()
    min_rows: Callable[[int], int] | None = None
    result: Callable[..., AggregateResult] | None = None
    #: ``result`` for the uncomputed rows of mixing pre-steps (a :class:`brmtrl.aggregators.pre.MixedRows`,
    #: same keywords), for a rule that needs only their Gram and one combination of them; None: the rows
    mixed: Callable[..., AggregateResult] | None = None

    def largest_f(self, n: int) -> int:
        """The largest f this rule tolerates among n rows."""
        return largest_f(self.min_rows, n)


def _chunk(n: int) -> int:
    """Columns per block: ~2²¹ entries, so that a block stays in cache for its GEMM."""
    return max(4096, (1 << 21) // max(n, 1))


def combine_rows(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i x_i in x's dtype: one GEMV, or float64 column blocks where a weight is subnormal there."""
    if x.dtype == torch.float64:
        return weights @ x
    info = torch.finfo(x.dtype)
    w = weights.cpu().numpy()
    if float(np.abs(w[w != 0]).min(initial=1.0)) >= info.tiny / info.eps:      # weights normal in x's dtype
        return weights.to(x.dtype) @ x
    d, step = x.shape[1], _chunk(x.shape[0])
    point = torch.empty(d, dtype=torch.float64, device=x.device)
    for start in range(0, d, step):
        point[start:start + step] = weights @ x[:, start:start + step].to(torch.float64)
    return point.to(x.dtype)
