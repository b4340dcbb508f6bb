"""Compiled kernels for the aggregation rules on the CPU, where Numba is installed (``pip install
'brmtrl[fast]'``).

With few rows, the numpy/torch path is dominated by passes over memory rather than arithmetic: a
coordinate-wise selection among n ≤ 16 rows sorts each block of columns by a comparator network of numpy
calls, each one vector operation over a row of the block, so the block is read and written dozens of times;
the centred Gram matrix copies and centres the rows before its GEMM; a weighted sum of rows copies them to
float64 first. At n = 10 each cost several times the GEMM of the rows. The kernels here (:mod:`._jit`) do
the same work on tiles of 256 columns held in L1, in one pass over the input:

* :func:`select_ranks` (median, trimmed mean, centered clipping's start) and :func:`nearest_to_median`
  (Bulyan's coordinate stage) run the same network and the same arithmetic in the same order as the numpy
  path, so they give the **same bits**;
* :func:`centred_gram` (every distance-based rule: Krum, Bulyan's selection, the geometric median,
  centered clipping, NNM) adds dot products over 256 columns instead of one GEMM per block of up to 2²¹
  values, and :func:`combine_rows` adds the rows one after the other in float64 instead of a GEMV: the
  same sums in another order, so these rules agree with the numpy path **to rounding** (the Gram's error is
  within the GEMM path's, ``tests/test_kernels.py``), not bit for bit. Same install, same machine: same
  numbers;
* :func:`row_sq_norms` and :func:`scale_rows` (ARC: the rows' norms in one pass without a float64 copy,
  then the clipped rows scaled in float64 as the numpy path scales them) — the norms' sums in another order.

They run on C-contiguous float32/float64 CPU tensors of at least ``MIN_VALUES`` values: with fewer, a
kernel's first call in a process (compiling it, or loading it from Numba's disk cache: 0.3–2 s) costs more
than it saves. The passes over rows (the Gram matrix, the sums, ARC) take at most ``MAX_ROWS`` rows
(:func:`usable`): with more, torch's passes on two threads and the BLAS GEMM win (ARC at n = 100, d = 1e6:
427 ms in the single-threaded kernels against 299 ms). The selections take up to ``SELECT_ROWS`` rows
(:func:`selects`): a comparator network on tiles in cache stays faster than numpy's sort of transposed
sub-blocks well beyond 16 rows (the two middle ranks of d = 5·10⁷ / n columns, one thread each: 3.31× at
n = 32, 2.13× at 100, 1.55× at 200 and 400, 2.91× at 1000, ``benchmarks/selections.py``); the callers split
large selections among torch's threads (``columns.block_runs``; the kernels release the GIL).
``BRMTRL_KERNELS=0`` turns them off; without Numba the numpy path runs.
"""

from __future__ import annotations

import os
from functools import lru_cache
from types import ModuleType

import numpy as np
import torch

__all__ = ["DISABLE_ENV", "MAX_ROWS", "MIN_VALUES", "SELECT_ROWS", "centred_gram", "combine_rows", "nearest_to_median",
           "row_sq_norms", "scale_rows", "select_ranks", "selects", "status", "usable"]

MIN_VALUES = 1 << 18       # rows × columns from which a kernel is used
MAX_ROWS = 16              # passes over rows: up to this many (above, torch's two-thread passes and BLAS win)
SELECT_ROWS = 1024         # selections: among up to this many rows (measured faster up to 1000)
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
    except Exception as exc:  # noqa: BLE001 - e.g. no writable cache folder for cache=True: the numpy path
        return None, f"not used: the kernels did not load ({type(exc).__name__}: {exc})"
    return _jit, f"Numba {numba.__version__}"


def _compiled() -> ModuleType:
    """The compiled module, for a caller that checked :func:`usable`."""
    jit = _load()[0]
    assert jit is not None, "a kernel was called where usable() is False"
    return jit


def status() -> str:
    """Whether the kernels are used here, in words (for benchmark reports)."""
    return _load()[1]


def _takes(x: torch.Tensor, values: int) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 2
            and x.is_contiguous() and not x.requires_grad and values >= MIN_VALUES and _load()[0] is not None)


def usable(x: torch.Tensor) -> bool:
    """Whether the passes over rows (:func:`centred_gram`, :func:`combine_rows`, ARC's) take x (n, d): a
    C-contiguous float32/float64 CPU tensor of at most ``MAX_ROWS`` rows and at least ``MIN_VALUES`` values,
    Numba importable and not turned off."""
    return x.dim() == 2 and x.shape[0] <= MAX_ROWS and _takes(x, x.numel())


def selects(x: torch.Tensor, m: int) -> bool:
    """Whether the selections (:func:`select_ranks`, :func:`nearest_to_median`) take m of x (n, d)'s rows:
    2 ≤ m ≤ ``SELECT_ROWS``, m·d at least ``MIN_VALUES``, x as :func:`usable` asks (any n)."""
    return x.dim() == 2 and 2 <= m <= SELECT_ROWS and _takes(x, m * x.shape[1])


def select_ranks(x: torch.Tensor, rows: np.ndarray, pairs: np.ndarray, ranks: slice, cols: slice,
                 out: torch.Tensor, at: int = 0) -> None:
    """out[:, at : at + len(cols)] ← ranks ``ranks`` (a slice with step 1) of x[rows, cols]'s columns,
    sorted by the network ``pairs`` ((p, 2) int64; it must put those ranks in place). x as :func:`usable`
    asks; out (≥ len(ranks), ≥ at + len(cols)) C-contiguous, in x's dtype."""
    jit = _compiled()
    jit.select_ranks(x.numpy(), rows, pairs, ranks.start, ranks.stop, cols.start, cols.stop, out.numpy(), at)


def nearest_to_median(x: torch.Tensor, rows: np.ndarray, keep: int, pairs: np.ndarray, cols: slice,
                      point: torch.Tensor, ok: np.ndarray) -> np.ndarray:
    """Bulyan's coordinate stage without ties (``columns.nearest_to_median_mean``) on the columns ``cols``:
    into point (d,) (x's dtype, C-contiguous) the value, valid where ``ok``; into ok (d,) bool False where
    more than ``keep`` values tie within the band (the caller's exact path); returned, each selected row's
    count of kept coordinates among the ok ones of ``cols`` (float64)."""
    jit = _compiled()
    used = np.zeros(len(rows))
    jit.nearest_to_median(x.numpy(), rows, keep, pairs, cols.start, cols.stop, point.numpy(), used, ok)
    return used


def centred_gram(x: torch.Tensor, k: int, extra: torch.Tensor | None = None,
                 work: torch.dtype | None = None) -> np.ndarray:
    """The Gram matrix of the rows of x (n, d), and of ``extra`` (d,) as row n if given, about x_k: (m, m)
    float64, each entry a float64 sum of dot products over 256 columns of values centred in ``work``'s
    precision (float32 or float64; default x's). x as :func:`usable` asks; ``extra`` in x's dtype."""
    jit = _compiled()
    a = x.numpy()
    e = np.empty(0, a.dtype) if extra is None else extra.contiguous().numpy()
    m = x.shape[0] + (extra is not None)
    wd = np.float64 if (work or x.dtype) == torch.float64 else np.float32
    g = np.zeros((m, m))
    jit.centred_gram(a, k, e, np.empty((m, jit.TILE), wd), wd(0), g)
    return g


def combine_rows(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Σ_i w_i x_i (d,) in ``dtype`` (float32 or float64), accumulated in float64 row after row; x as
    :func:`usable` asks, w (n,) float64."""
    jit = _compiled()
    out = torch.empty(x.shape[1], dtype=dtype)
    jit.combine_rows(x.numpy(), w.numpy(), out.numpy())
    return out


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """‖x_i‖² (n,) float64, each a float64 sum of squares in one pass; x as :func:`usable` asks."""
    jit = _compiled()
    out = torch.empty(x.shape[0], dtype=torch.float64)
    jit.row_sq_norms(x.numpy(), out.numpy())
    return out


def scale_rows(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x_i · scale_i (scale (n,) float64) in x's dtype, the product taken in float64; rows with scale 1
    copied as they are. x as :func:`usable` asks."""
    jit = _compiled()
    out = torch.empty_like(x)
    jit.scale_rows(x.numpy(), scale.numpy(), out.numpy())
    return out
