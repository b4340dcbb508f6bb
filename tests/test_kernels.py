"""The compiled kernels (brmtrl.aggregators.kernels, Numba) against the numpy path they replace: the
selections give the same bits for every row count they take, both dtypes, with ties and without, across
tile boundaries; the Gram matrix, the weighted sums of rows and ARC's norms agree to rounding (the Gram
within the GEMM path's error); and where the kernels do not run."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from brmtrl.aggregators import aggregate, columns, kernels  # noqa: E402
from brmtrl.aggregators._jit import TILE  # noqa: E402
from brmtrl.aggregators.averages import trimmed_mean_trusted  # noqa: E402
from brmtrl.aggregators.columns import block_runs, compiled_rows, median_columns, nearest_to_median_mean  # noqa: E402


@pytest.fixture
def paths(monkeypatch):
    """Run a function once through the kernels (at any size) and once through the numpy path."""
    def both(fn):
        with monkeypatch.context() as m:
            m.setattr(kernels, "MIN_VALUES", 0)
            fast = fn()
        with monkeypatch.context() as m:
            m.setattr(kernels, "_load", lambda: (None, "off"))
            slow = fn()
        return fast, slow
    return both


def data(n: int, d: int, dtype: torch.dtype, ties: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:             # small integers: ties inside and at the edges of every band, ±0 included
        x = torch.randint(-3, 4, (n, d), generator=g).to(dtype)
        x[:, ::7] = -x[:, ::7]
        return x
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, d, dtype=torch.float64)
    x[-1] *= 1e4                                                      # a far row
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sizes", [range(2, 17), (17, 40, 100)], ids=["network-rows", "more-rows"])
def test_kernels_give_the_numpy_paths_bits(paths, dtype, ties, sizes):
    """Up to 16 rows the numpy path sorts by the same network; above, by numpy's sort of transposed
    sub-blocks: exact selections either way, so the same values (±0 compare equal)."""
    d = 3 * TILE + 37                                                 # three tiles and a partial one
    for n in sizes:
        x = data(n, d, dtype, ties, seed=n)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(kernels, "MIN_VALUES", 0)
            assert compiled_rows(x, n)
        (p1, v1), (p0, v0) = paths(lambda: median_columns(x))
        assert torch.equal(p1, p0) and torch.equal(v1, v0), n
        f = (n - 1) // 3
        t1, t0 = paths(lambda: trimmed_mean_trusted(x, f=f))
        assert torch.equal(t1.point, t0.point) and torch.equal(t1.trust, t0.trust), n
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(n))[:max(2, n - 1)]   # S ≠ x's order
        for keep in range(1, len(rows) + 1):
            (b1, u1), (b0, u0) = paths(lambda: nearest_to_median_mean(x, rows, keep))
            assert torch.equal(b1, b0), (n, keep)
            torch.testing.assert_close(u1, u0, rtol=1e-14, atol=0)   # tie columns' shares, summed per block


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule,kw,same_bits", [
    ("bulyan", {"f": 1}, True), ("median", {}, True), ("trimmed_mean", {"f": 2}, True),
    ("centered_clipping", {}, False), ("geometric_median", {}, False), ("krum", {"f": 2}, True),
    ("multi_krum", {"f": 2}, False), ("mean", {}, False),
    ("geometric_median", {"pre": ["nnm"], "f": 2}, False), ("geometric_median", {"pre": ["arc"], "f": 2}, False)])
def test_rules_at_their_default_threshold_agree_with_the_numpy_path(paths, dtype, rule, kw, same_bits):
    """n = 10 rows of 30 000 values (above MIN_VALUES, so the kernels run unpatched). The selections give the
    same bits (Bulyan's and Krum's choice of rows included); rules built on the Gram matrix or on a weighted
    sum of rows agree to their precision: the kernels add the same products in another order."""
    x = data(10, 30_000, dtype, False, seed=3)
    assert compiled_rows(x, 10) == (kernels.status().startswith("Numba"))
    r1, r0 = paths(lambda: aggregate(rule, x, **kw))
    if same_bits:
        assert torch.equal(r1.point, r0.point) and torch.equal(r1.trust, r0.trust)
    else:
        eps = torch.finfo(dtype).eps
        scale = float(x.abs().max())
        torch.testing.assert_close(r1.point, r0.point, rtol=0, atol=64 * eps * scale)
        torch.testing.assert_close(r1.trust, r0.trust, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-9)


@pytest.mark.parametrize("n", [3, 10, 16])
@pytest.mark.parametrize("dtype,work", [(torch.float32, None), (torch.float64, None), (torch.float32, torch.float64)])
def test_the_gram_kernel_is_at_least_as_precise_as_the_gemm_of_a_centred_copy(paths, n, dtype, work):
    """The centred Gram matrix (brmtrl.aggregators.gram) from the kernel (dot products over 256 columns) and
    from the BLAS path (one GEMM of a centred copy per 2²¹ values), against float64 sums of exact products:
    the kernel's error is within the BLAS path's (plus float64 rounding), and both within the γ model that
    the rules rely on; the extra point's column too; also in float64 for float32 rows (NNM's Gram)."""
    from brmtrl.aggregators import gram

    g = torch.Generator().manual_seed(n)
    d = 70_001
    x = (torch.randn(d, generator=g, dtype=torch.float64) * 50 + torch.randn(n, d, generator=g,
                                                                              dtype=torch.float64)).to(dtype)
    e = x.median(dim=0).values
    fast, slow = paths(lambda: gram._gram_about(x, 1, extra=e, work=work))
    c = x.numpy().astype(np.longdouble) - x[1].numpy().astype(np.longdouble)      # 64-bit mantissas
    ref = c @ c.T
    href = c @ (e.numpy().astype(np.longdouble) - x[1].numpy().astype(np.longdouble))
    scale = float(np.abs(np.diagonal(ref)).max())

    def err(got) -> float:
        return float(max(np.abs(got.g - ref).max(), np.abs(got.h - href).max())) / scale

    assert err(fast) <= fast.gamma == slow.gamma
    assert err(fast) <= err(slow) + 4 * np.finfo(np.float64).eps


def test_arc_rows_agree_with_the_numpy_path(paths):
    """ARC's norms (one compiled pass) and its clipped rows (scaled in float64, the others copied)."""
    from brmtrl.aggregators import arc

    x = data(10, 30_000, torch.float32, False, seed=5)
    (y1, m1), (y0, m0) = paths(lambda: arc(x, f=2))
    assert torch.equal(m1, m0)
    torch.testing.assert_close(y1, y0, rtol=2 * torch.finfo(torch.float32).eps, atol=0)
    assert not torch.equal(y1[-1], x[-1]) and torch.equal(y1[0], x[0])   # the far row is clipped, a near one not


@pytest.mark.parametrize("error", [ImportError("No module named 'numba'"),
                                   RuntimeError("cannot cache function: no locator available")])
def test_kernels_that_do_not_load_leave_the_numpy_path(monkeypatch, error):
    """Numba missing, or failing as it loads (no writable cache folder for ``cache=True``): the rules run the
    numpy path and ``status()`` says why, instead of an error from inside a rule."""
    import builtins

    real = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "numba":
            raise error
        return real(name, *args, **kwargs)

    x = data(10, 30_000, torch.float32, False, seed=1)
    monkeypatch.setattr(builtins, "__import__", failing)
    kernels._load.cache_clear()
    try:
        assert kernels.status().startswith("not used") and str(error) in kernels.status()
        assert not kernels.usable(x)
        assert torch.isfinite(aggregate("bulyan", x, f=1).point).all()
    finally:
        monkeypatch.undo()
        kernels._load.cache_clear()


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_block_runs_share_the_blocks_among_threads_once_each(two_threads, monkeypatch):
    x = torch.zeros(4, 10_000)
    calls: list[tuple[range, int]] = []

    def body(starts: range) -> None:
        calls.append((starts, threading.get_ident()))

    block_runs(x, 1000, 1 << 30, body)                                # one contiguous run per thread, in a pool
    assert sorted((r.start, r.stop) for r, _ in calls) == [(0, 5000), (5000, 10_000)]
    assert all(r.step == 1000 for r, _ in calls) and threading.get_ident() not in {t for _, t in calls}
    calls.clear()
    block_runs(x, 1000, columns.PARALLEL_VALUES - 1, body)           # below the threshold: here, in one call
    assert calls == [(range(0, 10_000, 1000), threading.get_ident())]

    def failing(starts: range) -> None:
        if 0 in starts:
            raise ValueError("block 0")
    with pytest.raises(ValueError, match="block 0"):
        block_runs(x, 1000, 1 << 30, failing)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernels", "numpy"])
@pytest.mark.parametrize("n", [10, 40])
def test_selections_shared_among_threads_give_the_same_bits(two_threads, monkeypatch, kernel, n):
    """Median, trimmed mean and Bulyan's coordinate stage (their trust included) split among two threads
    (the threshold lowered to split this small input) give the single thread's bits."""
    if not kernel:
        monkeypatch.setattr(kernels, "_load", lambda: (None, "off"))
    x = data(n, 20_000, torch.float32, False, seed=7)
    x[:, ::5] = x[:, ::5].round()                                   # ties in some columns: the exact path too
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:n - 2]

    def results():
        return [median_columns(x), trimmed_mean_trusted(x, f=n // 4), nearest_to_median_mean(x, rows, 3)]

    one = results()
    monkeypatch.setattr(columns, "PARALLEL_VALUES", 1)
    two = results()
    assert torch.equal(one[0][0], two[0][0]) and torch.equal(one[0][1], two[0][1])
    assert torch.equal(one[1].point, two[1].point) and torch.equal(one[1].trust, two[1].trust)
    assert torch.equal(one[2][0], two[2][0]) and torch.equal(one[2][1], two[2][1])
