"""Compiled column kernels for the coordinate-wise rules with few rows, where Numba is installed
(``pip install 'brmtrl[fast]'``).

With n ≤ 16 rows, a coordinate-wise selection on the CPU sorts each block of columns by a comparator network
of numpy calls (:mod:`.columns`): each call is one vector operation over a block's row, so a selection reads
and writes the block dozens of times, and at n = 10 the median's network and Bulyan's coordinate stage cost
several times a GEMM of the rows. The kernels here (:mod:`._jit`) run the same network and the same
arithmetic on tiles of 256 columns in L1, one pass over the input, and give the same bits as the numpy path
(``tests/test_kernels.py``). They are used for CPU float32/float64 inputs of at least ``MIN_VALUES`` values,
C-contiguous; below that a kernel's first call in a process (compiling it, or loading it from Numba's disk
cache: 0.3–2 s) costs more than it saves. ``BRMTRL_KERNELS=0`` turns them off; without Numba the numpy path
runs, with the same results.
"""

from __future__ import annotations

import os
from functools import lru_cache
from types import ModuleType

import numpy as np
import torch

__all__ = ["DISABLE_ENV", "MIN_VALUES", "nearest_to_median", "select_ranks", "status", "usable"]

MIN_VALUES = 1 << 18       # rows × columns from which a kernel is used
DISABLE_ENV = "BRMTRL_KERNELS"


@lru_cache(maxsize=1)
def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(DISABLE_ENV, "").strip().lower() in {"0", "off", "false", "no"}:
        return None, f"off ({DISABLE_ENV}={os.environ[DISABLE_ENV]})"
    try:
        from . import _jit
        import numba
    except ImportError as exc:
        return None, f"not used: Numba is not importable ({exc})"
    return _jit, f"Numba {numba.__version__}"


def status() -> str:
    """Whether the kernels are used here, in words (for benchmark reports)."""
    return _load()[1]


def usable(x: torch.Tensor, values: int | None = None) -> bool:
    """Whether a kernel takes x (n, d): a C-contiguous float32/float64 CPU tensor, ``values`` (default n·d)
    at least ``MIN_VALUES``, Numba importable and not turned off."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 2
            and x.is_contiguous() and not x.requires_grad
            and (x.numel() if values is None else values) >= MIN_VALUES and _load()[0] is not None)


def select_ranks(x: torch.Tensor, rows: np.ndarray, pairs: np.ndarray, ranks: slice, cols: slice,
                 out: torch.Tensor, at: int = 0) -> None:
    """out[:, at : at + len(cols)] ← ranks ``ranks`` (a slice with step 1) of x[rows, cols]'s columns,
    sorted by the network ``pairs`` ((p, 2) int64; it must put those ranks in place). x as :func:`usable`
    asks; out (≥ len(ranks), ≥ at + len(cols)) C-contiguous, in x's dtype."""
    jit = _load()[0]
    assert jit is not None
    jit.select_ranks(x.numpy(), rows, pairs, ranks.start, ranks.stop, cols.start, cols.stop, out.numpy(), at)


def nearest_to_median(x: torch.Tensor, rows: np.ndarray, keep: int, pairs: np.ndarray
                      ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Bulyan's coordinate stage without ties (``columns.nearest_to_median_mean``): the point (d,) in x's
    dtype, valid where ``ok``; each selected row's count of kept coordinates among the ok ones (float64);
    ``ok`` (d,) bool, False where more than ``keep`` values tie within the band (the caller's exact path)."""
    jit = _load()[0]
    assert jit is not None
    d = x.shape[1]
    point = torch.empty(d, dtype=x.dtype)
    used = np.zeros(len(rows))
    ok = np.empty(d, dtype=np.bool_)
    jit.nearest_to_median(x.numpy(), rows, keep, pairs, point.numpy(), used, ok)
    return point, used, ok
