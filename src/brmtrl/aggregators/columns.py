"""Coordinate-wise selection in column blocks: the median, the values nearest it, the band each row falls in.

The coordinate-wise rules (median, trimmed mean, Bulyan's second stage, centered clipping's start) select
among the n values of each coordinate. Done on the whole (n, d) matrix at once, a selection sorts or copies
n·d values in float64 and runs at memory speed many times over. Here the columns are processed in blocks of
about 2¹⁸ values, so that each block, in float64 where it matters, stays in cache while every step of the
selection runs on it. Each block's columns are sorted, which puts every rank a rule needs in place at once.
With few rows (n ≤ 16) a sorting network does it on the CPU: Batcher's odd–even merge network, each
comparator a min and a max of two whole rows, O(n log² n) vector operations (at n = 10 it sorts a block 2.8×
faster than numpy partitions it once). With more rows, small sub-blocks are transposed so that each column is
a contiguous row and sorted there by numpy's vectorised sort (AVX-512/AVX2 kernels): at n = 100 as fast as
one introselect per column (``numpy.partition``, which needs a call per column and one call per rank) and
twice as fast where a rule needs two ranks (``benchmarks/aggregator_parts.py``); those sub-blocks are read
straight from the input (:func:`select_ranks`), not from a copy of the block (``median_columns`` at
n = 100, d = 1e6: 330.0 → 309.8 ms, fastest of 8, old and new interleaved). Other devices use
``torch.sort``. Where Numba is installed, the compiled kernels (:mod:`.kernels`) run the same network on
tiles in cache for up to ``kernels.SELECT_ROWS`` rows (:func:`compiled_rows`), the same values faster.
On the CPU, large selections share their blocks among torch's threads (:func:`block_runs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

from . import kernels

__all__ = ["NETWORK_ROWS", "PARALLEL_VALUES", "block_columns", "block_runs", "column_blocks", "combine_rows", "median_columns", "nearest_to_median_mean",
           "network_pairs", "network_pairs_for", "network_sort", "rank_work", "select_ranks",
           "SORT_VALUES", "block_ranks", "compiled_rows", "sort_columns"]


def block_columns(n: int) -> int:
    """Columns per block: ~2¹⁸ values (2 MiB in float64), at least 256."""
    return max(256, (1 << 18) // max(n, 1))


PARALLEL_VALUES = 1 << 21   # from this many values a CPU selection splits its columns among torch's threads


def block_runs(x: torch.Tensor, cols: int, values: int, body: Callable[[range], None]) -> None:
    """Call ``body`` on the first columns 0, cols, 2·cols, … < d of x (n, d)'s blocks: in one call, or,
    on the CPU from ``PARALLEL_VALUES`` selected ``values`` and with torch allowed more than one thread
    (``torch.get_num_threads()``, which the ``threads`` setting sets), in one contiguous run of blocks per
    thread, all at once. A selection's blocks are independent and its work (numpy's sorts and copies, the
    compiled kernels) runs without the GIL, so the threads share the cores as the bound's GEMM does; the
    selected values do not depend on the split. Each call of ``body`` owns its buffers; an exception in
    one is raised here after all have ended."""
    starts = range(0, x.shape[1], max(cols, 1))
    threads = min(torch.get_num_threads(), len(starts))
    if threads < 2 or values < PARALLEL_VALUES or x.device.type != "cpu":
        body(starts)
        return
    size = -(-len(starts) // threads)
    with ThreadPoolExecutor(threads, thread_name_prefix="brmtrl-columns") as pool:
        runs = [pool.submit(body, starts[i:i + size]) for i in range(0, len(starts), size)]
    for run in runs:
        run.result()


def combine_rows(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Σ_i w_i x_i in float64, one GEMV per block of columns (no float64 copy of x), in ``dtype`` (default
    x's); where the compiled kernels run (:func:`kernels.usable`), one pass that adds the rows in order in
    float64 (the same sum to rounding)."""
    n, d = x.shape
    w = w.to(device=x.device, dtype=torch.float64)
    if kernels.usable(x) and (dtype or x.dtype) in (torch.float32, torch.float64):
        return kernels.combine_rows(x, w.contiguous(), dtype or x.dtype)   # the same sum in one compiled pass
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


NETWORK_ROWS = 16   # up to this many rows, CPU selections sort by a network (module docstring)
_NUMPY = (torch.float32, torch.float64, torch.float16)


@lru_cache(maxsize=None)
def network_pairs(n: int) -> tuple[tuple[int, int], ...]:
    """The comparators (i, j), i < j, of Batcher's odd–even merge sorting network on n inputs: applying
    ``x_i, x_j = min, max`` for each in order sorts any n values (K. E. Batcher, "Sorting networks and their
    applications", AFIPS 1968). Built for the next power of two; comparators that reach past n are dropped
    (the missing inputs stand for +∞ and never move)."""
    size = 1 << max(n - 1, 0).bit_length()
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


@lru_cache(maxsize=None)
def network_pairs_for(n: int, start: int, stop: int) -> tuple[tuple[int, int], ...]:
    """The comparators of :func:`network_pairs` (n) that ranks ``start`` … ``stop`` − 1 depend on: walking
    back from the last comparator, one is kept when a rank still needed reads either of its outputs, and its
    two inputs are needed from then on; the others only move values that no needed rank reads. Applied in
    order, they put those ranks in place (the two middle ranks of 10 values: 29 comparators of 32)."""
    need = set(range(start, stop))
    kept = []
    for i, j in reversed(network_pairs(n)):
        if i in need or j in need:
            kept.append((i, j))
            need |= {i, j}
    return tuple(reversed(kept))


@lru_cache(maxsize=None)
def _pairs_array(n: int, start: int, stop: int) -> np.ndarray:
    """:func:`network_pairs_for` as an (p, 2) int64 array, for the compiled kernels."""
    return np.array(network_pairs_for(n, start, stop), dtype=np.int64).reshape(-1, 2)


def network_sort(s: torch.Tensor, ranks: slice | None = None) -> torch.Tensor:
    """Sort each column of s (m, b) in place by :func:`network_pairs` (NaNs are not ordered: the server
    rejects non-finite updates before any rule); with ``ranks``, only those rows are sure to hold their
    ranks. On the CPU the comparators run as numpy ufuncs on s's memory (a third of torch's per-call cost,
    which dominates on cache-sized rows). Each comparator writes its min into a free row of storage and its
    max over its second input, and the two rows change places by name only (two operations per comparator,
    not three); at the end the ranks asked for are copied to their own rows. With ``ranks``, only the
    comparators those ranks depend on run (:func:`network_pairs_for`)."""
    m = s.shape[0]
    if m < 2 or s.shape[1] == 0:
        return s
    lib, a = (np, s.numpy()) if s.device.type == "cpu" and s.dtype in _NUMPY else (torch, s)
    store = [a[r] for r in range(m)] + [lib.empty_like(a[0])]   # s's rows, then one spare row
    where = list(range(m))               # where[r]: the storage that holds rank r
    free = m                             # the storage that holds nothing
    start, stop, _ = (ranks or slice(None)).indices(m)
    for i, j in network_pairs_for(m, start, stop):
        lib.minimum(store[where[i]], store[where[j]], out=store[free])
        lib.maximum(store[where[i]], store[where[j]], out=store[where[j]])
        where[i], free = free, where[i]
    holder = {where[r]: r for r in range(m)}
    for r in range(m)[ranks if ranks is not None else slice(None)]:   # bring rank r home to row r
        if where[r] == r:
            continue
        if r != free:                    # row r's storage holds rank q: move q to the free storage
            q = holder.pop(r)
            store[free][...] = store[r]
            where[q], holder[free] = free, q
        store[r][...] = store[where[r]]
        free = where[r]
        del holder[free]
        where[r], holder[r] = r, r
    return s


SORT_VALUES = 1 << 14   # values per transposed sub-block: 64 KiB in float32, in L2 with its transpose


def _ranks_transposed(a: np.ndarray, ranks: slice, out: np.ndarray) -> None:
    """Rows ``ranks`` of a (m, b)'s columns sorted ascending, into out (len(ranks), b): sub-blocks of
    columns are copied, transposed, into one small buffer, read straight from a (a strided view of a larger
    matrix is fine: no copy of a is made first), so that each column is a contiguous row, sorted there by
    numpy's vectorised sort (x86-simd-sort's AVX-512 / AVX2 kernels where the CPU has them), and only the
    ranks asked for are written to out. out may be a's own rows ``ranks`` (each sub-block is read before
    its columns are written)."""
    m, b = a.shape
    cols = max(1, SORT_VALUES // m)
    buf = np.empty((min(cols, b), m), dtype=a.dtype)
    for j in range(0, b, cols):
        t = buf[:min(cols, b - j)]
        np.copyto(t, a[:, j:j + cols].T)
        t.sort(axis=1)
        np.copyto(out[:, j:j + cols], t[:, ranks].T)


def _network_path(s: torch.Tensor) -> bool:
    return s.device.type == "cpu" and s.shape[0] <= NETWORK_ROWS and s.dtype.is_floating_point


def sort_columns(s: torch.Tensor, *, inplace: bool = False, ranks: slice | None = None) -> torch.Tensor:
    """Each column of s (m, b) sorted ascending (in s itself with ``inplace``), so that every rank a rule
    selects is in place at once: up to ``NETWORK_ROWS`` rows on the CPU by a sorting network
    (:func:`network_sort`), above it by numpy's vectorised sort on transposed sub-blocks
    (:func:`_ranks_transposed`: as fast as one introselect per column at n = 100 and twice as fast where a
    rule needs two ranks, ``benchmarks/aggregator_parts.py``), on other devices and dtypes by
    ``torch.sort``. With ``ranks`` (a slice of rows with step 1) only those rows are sure to hold their
    ranks; the other rows may keep any of the column's values (the transposed sort then writes back only
    those ranks). NaNs are not ordered: the server rejects non-finite updates before any rule.
    :func:`select_ranks` gives the ranks without changing s."""
    if _network_path(s):
        return network_sort(s if inplace else s.clone(), ranks)
    if s.device.type == "cpu" and s.dtype in _NUMPY:
        out = s if inplace else s.clone()
        if out.shape[0] > 1 and out.shape[1] > 0:
            a, r = out.numpy(), slice(None) if ranks is None else ranks
            _ranks_transposed(a, r, a[r])
        return out
    ordered = s.sort(dim=0).values                  # other devices and dtypes numpy lacks (bfloat16)
    return s.copy_(ordered) if inplace else ordered


def rank_work(x: torch.Tensor, cols: int) -> torch.Tensor | None:
    """The buffer :func:`select_ranks` needs as ``work`` for blocks of up to ``cols`` of x's columns (the
    sorting network sorts a copy of each block), None where it reads x directly; allocated once per rule
    call, not per block (an allocation per block costs more than its copy on the CPU)."""
    return torch.empty(x.shape[0], min(cols, x.shape[1]), dtype=x.dtype, device=x.device) if _network_path(x) \
        else None


def select_ranks(src: torch.Tensor, ranks: slice, *, out: torch.Tensor | None = None,
                 work: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``ranks`` (a slice with step 1) of src (m, b)'s columns sorted ascending, (len(ranks), b), in
    ``out`` if given; src is left as it is. Up to ``NETWORK_ROWS`` rows on the CPU, the sorting network
    sorts a copy of src in ``work`` (an (m, ≥ b) buffer, :func:`rank_work`; a new one without it); above,
    numpy's sort of transposed sub-blocks reads src itself, so the selection of a block of a large matrix
    makes no copy of the block first; elsewhere ``torch.sort``."""
    m, b = src.shape
    start, stop, _ = ranks.indices(m)
    if out is None:
        out = torch.empty(max(stop - start, 0), b, dtype=src.dtype, device=src.device)
    if stop <= start or b == 0:
        return out
    if _network_path(src):
        s = work[:, :b].copy_(src) if work is not None else src.clone()
        out.copy_(network_sort(s, ranks)[ranks])
    elif src.device.type == "cpu" and src.dtype in _NUMPY:
        _ranks_transposed(src.numpy(), slice(start, stop), out.numpy())
    else:
        out.copy_(src.sort(dim=0).values[ranks])
    return out


def compiled_rows(x: torch.Tensor, m: int) -> bool:
    """Whether selections among m rows of x (n, d) run in the compiled kernels (:func:`kernels.selects`:
    2 ≤ m ≤ ``kernels.SELECT_ROWS``, x a CPU tensor they take, at least ``kernels.MIN_VALUES`` selected
    values)."""
    return kernels.selects(x, m)


def _runs_of_columns(d: int, values: int) -> int:
    """Columns per call of a compiled selection that takes all its columns at once: all d, or d split
    evenly among torch's threads from ``PARALLEL_VALUES`` values (:func:`block_runs` then runs one call per
    thread)."""
    return -(-d // max(1, min(torch.get_num_threads(), values // PARALLEL_VALUES)))


def block_ranks(x: torch.Tensor, cols: slice, ranks: slice, out: torch.Tensor, at: int = 0, *,
                work: torch.Tensor | None = None, compiled: bool = False) -> torch.Tensor:
    """Rows ``ranks`` (step 1, within range) of the sorted columns ``cols`` of x (n, d), into out[:, at:at +
    len(cols)], which is returned: by the compiled kernel with ``compiled`` (:func:`compiled_rows`; out
    C-contiguous), else by :func:`select_ranks` (``work``: :func:`rank_work`). Same values either way."""
    view = out[:, at:at + cols.stop - cols.start]
    if compiled:
        n = x.shape[0]
        kernels.select_ranks(x, _all_rows(n), _pairs_array(n, ranks.start, ranks.stop), ranks, cols, out, at)
        return view
    return select_ranks(x[:, cols], ranks, out=view, work=work)


@lru_cache(maxsize=None)
def _all_rows(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def median_columns(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The coordinate-wise median of x (n, d), in x's dtype (for even n the average of the two middle values,
    taken in float64 and rounded once), and the values it takes, (1, d) for odd n and (2, d) for even n:
    the two middle ranks v_(⌈n/2⌉) and v_(⌊n/2⌋+1) of each column, by :func:`block_ranks` (column blocks;
    where the compiled kernel runs, one call for all columns, or one per thread for large x), the blocks
    shared among torch's threads from ``PARALLEL_VALUES`` values (:func:`block_runs`)."""
    n, d = x.shape
    k = (n - 1) // 2
    mid = torch.empty(1 if n % 2 else 2, d, dtype=x.dtype, device=x.device)
    compiled = compiled_rows(x, n)
    cols = _runs_of_columns(d, n * d) if compiled else block_columns(n)

    def run(starts: range) -> None:
        work = None if compiled else rank_work(x, cols)
        for c in starts:
            w = min(cols, d - c)
            block_ranks(x, slice(c, c + w), slice(k, k + 2 - n % 2), mid, c, work=work, compiled=compiled)

    block_runs(x, cols, n * d, run)
    if n % 2:
        return mid[0].clone(), mid
    return (0.5 * mid[0].to(torch.float64) + 0.5 * mid[1].to(torch.float64)).to(x.dtype), mid


def _windows(m: int, keep: int) -> tuple[int, range, slice]:
    """For ``keep`` of m sorted values: the lower middle rank k, the first ranks of the runs of ``keep``
    consecutive ranks that hold the middle, and the ranks they span with the middle ones."""
    k = (m - 1) // 2
    starts = range(max(0, k - keep + 1), min(k + 1 if m % 2 == 0 else k, m - keep) + 1)
    return k, starts, slice(min(starts[0], k), max(starts[-1] + keep, k + 2 - m % 2))


def nearest_to_median_mean(x: torch.Tensor, rows: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per coordinate j, with m_j the coordinate-wise median of the selected rows S = x[rows] (float64), the
    mean of the ``keep`` values of S nearest m_j (ties: the lower position in ``rows``), in x's dtype; and the
    fraction of coordinates each row of S shares in (its value within the kept values' range, the uses of a
    coordinate shared among the rows there), (|S|,) float64. Bulyan's coordinate stage. Where the compiled
    kernel runs (:func:`compiled_rows`), it takes every column without ties in one pass and the columns it
    leaves (ties within the band) take the exact path of :func:`_nearest_blocks`; the same values either way."""
    m, d = len(rows), x.shape[1]
    if d == 0:
        return torch.empty(0, dtype=x.dtype, device=x.device), torch.full((m,), keep / m, dtype=torch.float64,
                                                                          device=x.device)
    if not compiled_rows(x, m):
        point, used = _nearest_blocks(x, rows, keep)
        return point, used / d
    _, _, window = _windows(m, keep)
    point = torch.empty(d, dtype=x.dtype)
    ok = np.empty(d, dtype=np.bool_)
    cols = _runs_of_columns(d, m * d)
    counts = np.zeros((-(-d // cols), m))            # per call: whole counts, so any order adds them exactly
    picked, pairs = rows.cpu().numpy().astype(np.int64), _pairs_array(m, window.start, window.stop)

    def run(starts: range) -> None:
        for c in starts:
            counts[c // cols] = kernels.nearest_to_median(x, picked, keep, pairs, slice(c, min(c + cols, d)),
                                                          point, ok)

    block_runs(x, cols, m * d, run)
    used = torch.from_numpy(counts.sum(axis=0))
    rest = torch.from_numpy(np.flatnonzero(~ok))
    if len(rest):
        point[rest], more = _nearest_blocks(x.index_select(1, rest), rows, keep)
        used += more
    return point, used / d


def _rows_in_order(a: torch.Tensor) -> torch.Tensor:
    """Σ_i a_i added row after row (into a[0]): a sum whose rounding does not depend on the block's width,
    as ``sum(dim=0)``'s does, and the one the compiled kernel computes."""
    acc = a[0]
    for r in range(1, a.shape[0]):
        acc += a[r]
    return acc


def _nearest_blocks(x: torch.Tensor, rows: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest_to_median_mean` over column blocks (d > 0), any device; the uses as counts of
    coordinates (not yet divided by d). Each block's uses are kept apart and added in block order at the
    end, so that the sum does not depend on how :func:`block_runs` shares the blocks among threads."""
    m, d = len(rows), x.shape[1]
    point = torch.empty(d, dtype=x.dtype, device=x.device)
    cols = block_columns(m)
    used = torch.zeros(-(-d // cols), m, dtype=torch.float64, device=x.device)   # per block
    inf = float("inf")
    f64 = dict(dtype=torch.float64, device=x.device)
    k, starts, window = _windows(m, keep)                # k: the lower middle rank
    width = min(cols, d)
    like = dict(dtype=x.dtype, device=x.device)

    def run(firsts: range) -> None:
        # reused buffers (no page faults): the values sorted in x's dtype (sorting moves them exactly, and a
        # narrower sort is faster), everything else in float64, the sorted ranks the windows read included
        sel_buf = torch.empty(m, width, **like)
        work_buf = rank_work(sel_buf, width)
        part_buf = torch.empty(window.stop - window.start, width, **like)
        s_buf, dist_buf = torch.empty(m, width, **f64), torch.empty(m, width, **f64)
        ends_buf = torch.empty(window.stop - window.start, width, **f64)
        kept_buf = torch.empty(m, width, dtype=torch.bool, device=x.device)
        for c in firsts:
            w = min(cols, d - c)
            sel, s, dist, kept = sel_buf[:, :w], s_buf[:, :w], dist_buf[:, :w], kept_buf[:, :w]
            torch.index_select(x[:, c:c + w], 0, rows, out=sel)
            part = select_ranks(sel, window, out=part_buf[:, :w], work=work_buf)   # the middle ranks
            s.copy_(sel)
            ends = ends_buf[:, :w].copy_(part)          # ranks window.start … window.stop − 1, float64
            lo, hi = ends[k - window.start], ends[k + 1 - m % 2 - window.start]
            med = 0.5 * lo + 0.5 * hi
            torch.sub(s, med, out=dist).abs_()
            # the keep-th smallest distance t: the keep values nearest m_j are consecutive in sorted order
            # and hold a middle value, so t is the least over those windows of their farther end's distance.
            # That t is never below the true one; where it is above (m_j rounded outside [lo, hi],
            # subnormals) or where ties reach past keep values, more than keep values fall within it: the
            # exact path below
            lo_end = ends[starts[0] - window.start:starts[-1] + 1 - window.start]     # each window's first
            hi_end = ends[starts[0] + keep - 1 - window.start:starts[-1] + keep - window.start]   # and last
            t = torch.maximum(med - lo_end, hi_end - med).amin(dim=0)
            torch.le(dist, t, out=kept)
            if int(kept.sum()) == keep * w:    # ≥ keep per column, so keep in each: no tie at t beyond the
                point[c:c + w] = (_rows_in_order(torch.mul(s, kept, out=dist)) / keep).to(x.dtype)   # keep
                used[c // cols] = kept.sum(dim=1)                                         # values: the band
                continue
            t = select_ranks(dist, slice(keep - 1, keep))[0]                                   # exact: a sort
            below, tied = dist < t, dist == t
            kept = below | (tied & (tied.cumsum(dim=0) <= keep - below.sum(dim=0)))
            point[c:c + w] = (_rows_in_order(torch.where(kept, s, 0.0)) / keep).to(x.dtype)
            low = torch.where(kept, s, inf).amin(dim=0)
            high = torch.where(kept, s, -inf).amax(dim=0)
            inband = (s >= low) & (s <= high)
            share = keep / inband.sum(dim=0).clamp_min(1).to(torch.float64)
            used[c // cols] = torch.mv(inband.to(torch.float64), share)

    block_runs(x, cols, m * d, run)
    return point, _rows_in_order(used)
