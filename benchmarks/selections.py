"""The coordinate-wise selection by row count: the compiled comparator network against numpy's sort of
transposed sub-blocks, on one thread, then shared among two threads (issue 20; ``kernels.SELECT_ROWS``).

Stand-alone (not part of the test suite); run from the repository root on an otherwise idle machine::

    python benchmarks/selections.py

For each n, a float32 matrix of about 5·10⁷ values (d = 5·10⁷ / n columns) and the two middle ranks of
every column, as the median of an even n takes them (``columns.median_columns``). Each cell is the best of 3
runs after one warm-up, the two paths interleaved; both give the same values (checked). Columns: the
numpy path (``BRMTRL_KERNELS`` off) and the kernel on one thread, their ratio, then both on two threads
(``columns.block_runs``), with the bound (one float32 GEMM ``X @ X.T`` + one pass ``X.sum(0)``, two
threads) timed beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from brmtrl.aggregators import kernels
from brmtrl.aggregators.columns import median_columns

VALUES = 50_000_000


def best(fn: Callable[[], object], reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    if not kernels.status().startswith("Numba"):
        raise SystemExit(f"the kernels are not used here: {kernels.status()}")
    numpy_load = lambda: (None, "off (benchmark)")   # noqa: E731
    kernel_load = kernels._load

    def timed(x: torch.Tensor, compiled: bool, threads: int) -> tuple[float, torch.Tensor]:
        kernels._load = kernel_load if compiled else numpy_load   # type: ignore[method-assign]
        torch.set_num_threads(threads)
        try:
            return best(lambda: median_columns(x)), median_columns(x)[1]
        finally:
            kernels._load = kernel_load                          # type: ignore[method-assign]
            torch.set_num_threads(2)

    print(f"about {VALUES:.0e} float32 values per matrix, the two middle ranks of each column; "
          f"torch {torch.__version__}, kernels: {kernels.status()}\n")
    print("| n | d | numpy, 1 thread (ms) | kernel, 1 thread (ms) | numpy / kernel | numpy, 2 threads (ms) "
          "| kernel, 2 threads (ms) | bound, 2 threads (ms) | kernel, 2 threads / bound |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for n in (32, 100, 200, 400, 1000):
        d = VALUES // n
        x = torch.randn(n, d, generator=gen)
        t_np1, v_np = timed(x, False, 1)
        t_k1, v_k = timed(x, True, 1)
        if not torch.equal(v_np, v_k):
            raise SystemExit(f"n = {n}: the kernel and the numpy path selected different values")
        t_np2, _ = timed(x, False, 2)
        t_k2, _ = timed(x, True, 2)
        bound = best(lambda: (x @ x.T, x.sum(0)))
        print(f"| {n} | {d} | {t_np1 * 1e3:.1f} | {t_k1 * 1e3:.1f} | {t_np1 / t_k1:.2f}× | {t_np2 * 1e3:.1f} "
              f"| {t_k2 * 1e3:.1f} | {bound * 1e3:.1f} | {t_k2 / bound:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
