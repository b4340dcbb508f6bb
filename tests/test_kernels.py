"""The compiled column kernels (brmtrl.aggregators.kernels, Numba) give the same bits as the numpy path they
replace, for every row count they take, both dtypes, with ties and without, across tile boundaries."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from brmtrl.aggregators import aggregate, kernels  # noqa: E402
from brmtrl.aggregators._jit import TILE  # noqa: E402
from brmtrl.aggregators.averages import trimmed_mean_trusted  # noqa: E402
from brmtrl.aggregators.columns import compiled_rows, median_columns, nearest_to_median_mean  # noqa: E402


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
def test_kernels_give_the_numpy_paths_bits(paths, dtype, ties):
    d = 3 * TILE + 37                                                 # three tiles and a partial one
    for n in range(2, 17):
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


@pytest.mark.parametrize("rule,kw", [("bulyan", {"f": 1}), ("centered_clipping", {}), ("median", {}),
                                     ("trimmed_mean", {"f": 2})])
def test_rules_at_their_default_threshold_are_unchanged(paths, rule, kw):
    """n = 10 rows of 30 000 values (above MIN_VALUES, so the kernels run unpatched): the whole rule, point
    and trust, is the same with and without them."""
    x = data(10, 30_000, torch.float64, False, seed=3)
    assert compiled_rows(x, 10) == (kernels.status().startswith("Numba"))
    r1, r0 = paths(lambda: aggregate(rule, x, **kw))
    assert torch.equal(r1.point, r0.point) and torch.equal(r1.trust, r0.trust)


def test_kernels_can_be_turned_off_and_are_not_used_where_they_cannot_run(monkeypatch):
    x = data(10, 30_000, torch.float32, False, seed=0)
    assert kernels.usable(x) == kernels.status().startswith("Numba")
    assert not kernels.usable(x[:, ::2])                              # not C-contiguous
    assert not kernels.usable(x.to(torch.bfloat16)) and not kernels.usable(x[:, :100])   # dtype; too small
    assert not compiled_rows(x, 17) and not compiled_rows(x, 1)       # the network's row limit
    monkeypatch.setenv(kernels.DISABLE_ENV, "0")
    kernels._load.cache_clear()
    try:
        assert kernels.status() == f"off ({kernels.DISABLE_ENV}=0)" and not kernels.usable(x)
    finally:
        monkeypatch.delenv(kernels.DISABLE_ENV)
        kernels._load.cache_clear()
