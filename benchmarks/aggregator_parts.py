"""Where the time of the slower aggregation rules goes, part by part (issue 20), at n = 100, d = 1e6 float32.

Stand-alone (not part of the test suite); run from the repository root on an otherwise idle machine::

    python benchmarks/aggregator_parts.py

Each line: the best of 3 runs after one warm-up, in ms and as a ratio to BOUND (one float32 GEMM
``X @ X.T`` + one pass ``X.sum(0)``, as in ``benchmarks/aggregators.py``).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from brmtrl.aggregators import aggregate
from brmtrl.aggregators.base import _band_used
from brmtrl.aggregators.columns import block_columns, column_blocks, median_columns, sort_columns
from brmtrl.aggregators.gram import _central_gram
from brmtrl.aggregators.pre import _mix, arc, nnm


def best(fn: Callable[[], object], reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    torch.set_num_threads(2)
    n, d = 100, 1_000_000
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(d, generator=gen) + 0.5 * torch.randn(n, d, generator=gen)
    x[75:] = 5.0 * torch.randn(25, d, generator=gen)
    bound = best(lambda: x @ x.T) + best(lambda: x.sum(0))
    cols = block_columns(n)
    buf = torch.empty(n, cols)

    def partition_once() -> None:
        for c in range(0, d, cols):
            block = buf[:, :min(cols, d - c)]
            block.copy_(x[:, c:c + cols])
            block.numpy().partition((n - 1) // 2, axis=0)

    def partition_two_kth() -> None:
        for c in range(0, d, cols):
            np.partition(x[:, c:c + cols].numpy(), [25, 74], axis=0)

    def kthvalue() -> None:
        for c in range(0, d, cols):
            x[:, c:c + cols].kthvalue((n + 1) // 2, dim=0)

    def sort_all() -> None:
        for _, block in column_blocks(x, cols):
            sort_columns(block, inplace=True)

    def sort_middle() -> None:
        for _, block in column_blocks(x, cols):
            sort_columns(block, inplace=True, ranks=slice((n - 1) // 2, n // 2 + 1))

    mid = median_columns(x)[1]
    _, m = nnm(x, f=25)
    parts = {
        "first touch of a new (n, d) float32 array (torch.empty(n, d).fill_(0))": lambda: torch.empty(n, d).fill_(0),
        "copy of the rows (x.clone())": lambda: x.clone(),
        "Gram matrix about a central row (_central_gram)": lambda: _central_gram(x),
        "the same in float64 GEMMs (MixedRows: NNM before the geometric median)":
            lambda: _central_gram(x, work=torch.float64),
        "numpy.partition, one kth per column, reused block buffer": partition_once,
        "numpy.partition, two kth per column": partition_two_kth,
        "torch.kthvalue per column": kthvalue,
        "numpy sort of transposed sub-blocks, every rank written back (sort_columns)": sort_all,
        "numpy sort of transposed sub-blocks, the two middle ranks written back": sort_middle,
        "the median's trust: rows within the band, numpy ufuncs (_band_used)": lambda: _band_used(x, mid[0], mid[-1], 2),
        "ARC: norms, then copy + clip in one pass (arc, f = 25)": lambda: arc(x, f=25),
        "coordinate-wise median (median_columns)": lambda: median_columns(x),
        "NNM's mixing x' = M x (_mix, new output)": lambda: _mix(m, x, 0),
        "NNM (distances + mixing)": lambda: nnm(x, f=25),
        "NNM + geometric median through aggregate (one float64 Gram, a GEMV)":
            lambda: aggregate("geometric_median", x, pre=["nnm"], f=25),
    }
    print(f"n = {n}, d = {d}, float32, torch {torch.__version__}, 2 threads; BOUND = {bound * 1e3:.1f} ms\n")
    print("| part | ms | / BOUND |\n|---|---:|---:|")
    for name, fn in parts.items():
        t = best(fn)
        print(f"| {name} | {t * 1e3:.1f} | {t / bound:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
