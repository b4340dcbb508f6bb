"""Bulyan, centered clipping, the pre-aggregation steps (NNM, bucketing), each row's trust, and the server
and CLI around them (issue 8). Every rule is checked against a plain loop written here, in float64."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from brmtrl import aggregators as agg
from brmtrl.aggregators import (AGGREGATORS, FLAG_BELOW, PRE_STEPS, aggregate, bucketing, bulyan, bulyan_trusted,
                                centered_clipping, centered_clipping_trusted, nnm, trimmed_mean_trusted)
from brmtrl.cli import main
from brmtrl.config import AGGREGATOR_NAMES as CONFIG_RULES, PRE_STEP_NAMES as CONFIG_PRE, ConfigError, load_config
from brmtrl.server import Aggregation, pre_generator, server_step

from .conftest import CONFIGS


def rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- plain references (loops, float64)
def ref_sq_dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum((float(p) - float(q)) ** 2 for p, q in zip(a, b)))


def ref_bulyan(x: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Bulyan as El Mhamdi, Guerraoui & Rouault (ICML 2018) write it: θ = n − 2f times, Krum(f) among the
    r rows left (each row's score: its squared distances to its r − f − 2 nearest rows left; one
    neighbour where that is < 1, the documented degenerate case), the winner (lowest index on ties)
    moved to the selection; then per coordinate the mean of the β = θ − 2f values nearest the median of
    the selected ones."""
    n, d = x.shape
    theta, beta = n - 2 * f, n - 4 * f
    left, chosen = list(range(n)), []
    for _ in range(theta):
        r = len(left)
        if r == 1:
            chosen.append(left.pop())
            continue
        k = max(r - f - 2, 1)
        scores = []
        for i in left:
            dist = sorted(ref_sq_dist(x[i], x[j]) for j in left if j != i)
            scores.append(sum(dist[:k]))
        best = min(range(r), key=lambda pos: (scores[pos], pos))
        chosen.append(left.pop(best))
    out, used = np.zeros(d), np.zeros(n)
    for j in range(d):
        vals = sorted((x[i, j], i) for i in chosen)
        mid = vals[theta // 2][0] if theta % 2 else 0.5 * (vals[theta // 2 - 1][0] + vals[theta // 2][0])
        near = sorted(range(theta), key=lambda p: (abs(x[chosen[p], j] - mid), p))[:beta]
        out[j] = sum(x[chosen[p], j] for p in near) / beta
        for p in near:
            used[chosen[p]] += 1
    return out, np.minimum(used / d * theta / beta, 1.0)


def ref_centered_clipping(x: np.ndarray, tau: float, iters: int, v0: np.ndarray | None = None):
    n, d = x.shape
    v = np.median(x, axis=0) if v0 is None else v0.copy()
    if tau == 0:
        tau = float(np.median([math.sqrt(ref_sq_dist(x[i], v)) for i in range(n)]))
    scale = np.ones(n)
    for _ in range(iters):
        step = np.zeros(d)
        for i in range(n):
            norm = math.sqrt(ref_sq_dist(x[i], v))
            scale[i] = min(1.0, tau / norm) if norm > 0 else 1.0
            step += (x[i] - v) * scale[i]
        v = v + step / n
    return v, scale, tau


def ref_nnm(x: np.ndarray, f: int) -> np.ndarray:
    n = len(x)
    out = np.zeros_like(x)
    for i in range(n):
        others = sorted((ref_sq_dist(x[i], x[j]), j) for j in range(n) if j != i)
        near = [i] + [j for _, j in others[:n - f - 1]]
        out[i] = sum(x[j] for j in near) / (n - f)
    return out


# --------------------------------------------------------------------------- Bulyan
@pytest.mark.parametrize("n,f,d,seed", [(7, 1, 5, 0), (11, 2, 8, 1), (12, 2, 3, 2), (3, 0, 4, 3), (15, 3, 6, 4)])
def test_bulyan_matches_the_plain_loop(n, f, d, seed):
    x = rows(n, d, seed)
    x[:f] = x[:f] * 50 + 20          # f far rows
    point, trust = ref_bulyan(x.numpy(), f)
    res = bulyan_trusted(x, f=f)
    np.testing.assert_allclose(res.point.numpy(), point, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(res.trust.numpy(), trust, rtol=1e-13, atol=1e-13)
    assert torch.equal(bulyan(x, f=f), res.point)


@pytest.mark.parametrize("n,f,d,seed", [(7, 1, 2, 10), (9, 1, 3, 11), (11, 2, 2, 12), (13, 2, 4, 13), (8, 1, 2, 14)])
def test_bulyan_selection_is_the_papers_iterated_krum(n, f, d, seed):
    """Rows in one cloud, no far row: every Krum step counts r − f − 2 neighbours among the r rows left,
    as in the paper (the earlier variant kept n − f − 2 and broke ties by total distance)."""
    x = rows(n, d, seed)
    point, trust = ref_bulyan(x.numpy(), f)
    res = bulyan_trusted(x, f=f)
    np.testing.assert_allclose(res.point.numpy(), point, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(res.trust.numpy(), trust, rtol=1e-13, atol=1e-13)


def test_bulyan_needs_4f_plus_3_and_float32_stays_float32():
    assert AGGREGATORS["bulyan"].largest_f(10) == 1 and AGGREGATORS["bulyan"].largest_f(11) == 2
    with pytest.raises(ValueError, match=r"bulyan: cannot tolerate f=2 Byzantine rows among n=10; it needs n >= 11"):
        bulyan(rows(10, 3), f=2)
    out = bulyan(rows(11, 4).float(), f=2)
    assert out.dtype == torch.float32 and out.shape == (4,)


@pytest.mark.usefixtures("numpy_path")
@pytest.mark.parametrize("n", [5, 8, 9, 52])
def test_column_blocks_select_as_a_stable_sort_of_the_whole_matrix(n):
    """The coordinate-wise selections run in column blocks (brmtrl.aggregators.columns): over many blocks
    and with many ties (small integers), the same as a stable sort of the whole matrix in float64."""
    from brmtrl.aggregators.columns import block_columns, median_columns, nearest_to_median_mean, sort_columns

    d = 3 * block_columns(n) + 17
    x = torch.randint(-3, 4, (n, d), generator=torch.Generator().manual_seed(n)).to(torch.float32)
    s = x.double().sort(dim=0).values
    mid = s[(n - 1) // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    point, values = median_columns(x)
    assert torch.equal(point, mid.float()) and torch.equal(values[0], s[(n - 1) // 2].float())
    rows_ = torch.arange(n - 1, -1, -1)                       # S in another order than x's rows
    keep = max(1, n // 3)
    sel = x[rows_].double()
    order = torch.argsort((sel - mid).abs(), dim=0, stable=True)[:keep]
    kept = torch.gather(sel, 0, order)
    got, used = nearest_to_median_mean(x, rows_, keep)
    torch.testing.assert_close(got, kept.mean(dim=0).float(), rtol=0, atol=0)
    inband = (sel >= kept.amin(dim=0)) & (sel <= kept.amax(dim=0))
    want = (inband.double() * (keep / inband.sum(dim=0).double())).sum(dim=1) / d
    torch.testing.assert_close(used, want, rtol=1e-12, atol=0)
    other = sort_columns(x.to(torch.bfloat16), inplace=True)   # the torch.sort path (no numpy dtype)
    assert torch.equal(other.float(), s.float())
    f = (n - 1) // 3                                          # trimmed mean: the same over every block
    res = trimmed_mean_trusted(x, f=f)
    torch.testing.assert_close(res.point, s[f:n - f].mean(dim=0).float(), rtol=0, atol=1e-6)
    inband = (x.double() >= s[f]) & (x.double() <= s[n - f - 1])
    used = (inband.double() * ((n - 2 * f) / inband.sum(dim=0).double())).sum(dim=1) / d
    torch.testing.assert_close(res.trust, torch.clamp(used * n / (n - 2 * f), max=1.0), rtol=1e-12, atol=0)



def test_the_sorting_network_sorts_every_input_up_to_its_row_limit():
    """Batcher's network (few rows on the CPU) sorts every 0/1 column of each size up to NETWORK_ROWS (by the
    0-1 principle, then every input), and random columns as torch.sort does; numpy's sort of transposed
    sub-blocks takes over above the limit (several sub-blocks, a last partial one), with the same result."""
    import itertools

    from brmtrl.aggregators.columns import NETWORK_ROWS, SORT_VALUES, network_pairs, network_sort, sort_columns

    for n in range(1, NETWORK_ROWS + 1):
        ones = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n))).T.contiguous()
        assert torch.equal(network_sort(ones.clone()), ones.sort(dim=0).values), n
        assert all(0 <= i < j < n for i, j in network_pairs(n))
        x = torch.randn(n, 33, generator=torch.Generator().manual_seed(n))
        for lo, hi in [(0, n), (n // 2, n // 2 + 1), ((n - 1) // 2, n // 2 + 1), (n // 3, n - n // 3)]:
            if lo < hi:                  # only the ranks asked for are put back in their rows
                assert torch.equal(network_sort(x.clone(), slice(lo, hi))[lo:hi], x.sort(dim=0).values[lo:hi])
    g = torch.Generator().manual_seed(0)
    for n in (NETWORK_ROWS, NETWORK_ROWS + 1, 100):
        for dtype in (torch.float64, torch.float32, torch.float16):
            x = torch.randn(n, 2 * (SORT_VALUES // n) + 7, generator=g).to(dtype)
            before = x.clone()
            assert torch.equal(sort_columns(x), x.sort(dim=0).values) and torch.equal(x, before)   # not in place
            assert sort_columns(x, inplace=True) is x and torch.equal(x, before.sort(dim=0).values)
            for ranks in (slice(n // 3, n // 3 + 1), slice(2, n - 2)):   # only these ranks are promised
                part = sort_columns(before, ranks=ranks)
                assert torch.equal(part[ranks], x[ranks])

# --------------------------------------------------------------------------- centered clipping
@pytest.mark.parametrize("tau,iters", [(0.0, 1), (0.0, 3), (0.5, 5), (100.0, 2)])
def test_centered_clipping_matches_the_plain_loop(tau, iters):
    x = rows(9, 6, 5)
    x[0] += 30.0
    v, scale, tau_used = ref_centered_clipping(x.numpy(), tau, iters)
    res = centered_clipping_trusted(x, tau=tau, iters=iters)
    np.testing.assert_allclose(res.point.numpy(), v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.trust.numpy(), scale, rtol=1e-12, atol=1e-12)
    assert res.info["tau"] == pytest.approx(tau_used, rel=1e-12)


def test_centered_clipping_on_the_gram_matrix_equals_iterating_on_the_rows():
    """float32 rows with far ones: the Gram path (start at the median) and the row-by-row path (a start
    point float32 cannot hold exactly sends it there) agree with the float64 loop to float32's precision."""
    x = rows(30, 3000, 9).float()
    x[:6] = 40.0 * x[:6] + 3.0
    v, scale, tau = ref_centered_clipping(x.double().numpy(), 0.0, 3)
    res = centered_clipping_trusted(x, iters=3)
    np.testing.assert_allclose(res.point.double().numpy(), v, rtol=0, atol=1e-5 * float(np.abs(v).max()))
    np.testing.assert_allclose(res.trust.numpy(), scale, rtol=1e-5)
    start = x.median(dim=0).values.double() + 1e-12                   # not a float32 value: rows path
    v2, scale2, _ = ref_centered_clipping(x.double().numpy(), tau, 3, start.numpy())
    res2 = centered_clipping_trusted(x, tau=tau, iters=3, centre=start)
    np.testing.assert_allclose(res2.point.double().numpy(), v2, rtol=0, atol=1e-5 * float(np.abs(v2).max()))
    np.testing.assert_allclose(res2.trust.numpy(), scale2, rtol=1e-5)


def test_centered_clipping_keeps_tau_positive_when_half_the_rows_sit_on_the_median():
    """Hand-worked: rows (1,1) ×3, (2,1), (1,3). The coordinate median is v₀ = (1,1) and three of the
    five distances are 0, so their median is 0; τ = 0 would clip the two other rows to nothing and
    flag them. τ is then ‖v₀‖ = √2, and the first step is
    v = v₀ + (1/5)·[(1,0)·min(1, √2/1) + (0,2)·min(1, √2/2)] = (1.2, 1 + √2/5)."""
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    one = centered_clipping_trusted(x, iters=1)
    assert one.info["tau"] == pytest.approx(math.sqrt(2), rel=1e-15)
    torch.testing.assert_close(one.point, torch.tensor([1.2, 1 + math.sqrt(2) / 5], dtype=torch.float64))
    assert not one.flagged.any()
    res = centered_clipping_trusted(x, iters=3)
    v, scale, _ = ref_centered_clipping(x.numpy(), math.sqrt(2), 3)
    np.testing.assert_allclose(res.point.numpy(), v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.trust.numpy(), scale, rtol=1e-12, atol=1e-12)
    same = torch.ones(4, 3, dtype=torch.float64)             # every row on the start point: any τ > 0
    out = centered_clipping_trusted(same)
    assert out.info["tau"] > 0 and torch.equal(out.point, same[0]) and (out.trust == 1).all()


def test_centered_clipping_with_a_coinciding_majority_bounds_the_far_rows_by_its_norm():
    """Six identical rows (NNM makes such duplicates) and four rows of size 1e6: τ = ‖v₀‖ bounds what the
    far rows can do (each moves v by at most τ/n per step); a τ taken from their distances would not."""
    g = torch.Generator().manual_seed(3)
    major = torch.tensor([0.3, -0.1, 0.2, 0.05], dtype=torch.float64)
    x = torch.cat([major.repeat(6, 1), 1e6 * torch.randn(4, 4, generator=g, dtype=torch.float64)])
    res = centered_clipping_trusted(x, iters=3)
    norm = float(torch.linalg.vector_norm(major))
    assert res.info["tau"] == pytest.approx(norm)
    assert float(torch.linalg.vector_norm(res.point - major)) <= 3 * 4 / 10 * norm + 1e-12
    assert (res.trust[6:] < FLAG_BELOW).all() and (res.trust[:6] == 1).all()


def test_centered_clipping_from_a_given_centre_and_huge_rows():
    x = rows(8, 5, 6)
    centre = torch.full((5,), 0.3, dtype=torch.float64)
    v, _, _ = ref_centered_clipping(x.numpy(), 1.0, 4, centre.numpy())
    np.testing.assert_allclose(centered_clipping(x, tau=1.0, iters=4, centre=centre).numpy(), v, rtol=1e-12, atol=1e-12)
    # rows up to 1e300: no overflow; each far row moves v by at most τ/n per iteration
    y = rows(10, 200, 7)
    y[:3] = 1e300
    out = centered_clipping_trusted(y, iters=3)
    assert torch.isfinite(out.point).all()
    honest_v, _, _ = ref_centered_clipping(y[3:].numpy(), 0.0, 1)
    assert float(torch.linalg.vector_norm(out.point - y[3:].median(dim=0).values)) <= 3 * 3 * out.info["tau"] / 10 + 1e-9
    assert (out.trust[:3] < 1e-250).all() and (out.trust[3:] >= FLAG_BELOW).all()
    assert np.isfinite(honest_v).all()


# --------------------------------------------------------------------------- pre-aggregation
@pytest.mark.parametrize("n,f", [(5, 0), (7, 2), (10, 3), (9, 4)])
def test_nnm_matches_the_plain_loop(n, f):
    x = rows(n, 6, n + f)
    x[0] += 40.0
    mixed, m = nnm(x, f=f)
    np.testing.assert_allclose(mixed.numpy(), ref_nnm(x.numpy(), f), rtol=1e-13, atol=1e-13)
    assert m.shape == (n, n) and torch.allclose(m.sum(dim=1), torch.ones(n, dtype=torch.float64))
    assert (torch.diagonal(m) == 1.0 / (n - f)).all()   # each row keeps itself
    torch.testing.assert_close(m @ x, mixed, rtol=0, atol=1e-13)


@pytest.mark.parametrize("n,s", [(10, 2), (10, 3), (7, 7), (5, 9), (6, 1)])
def test_bucketing_puts_each_row_in_exactly_one_bucket(n, s):
    x = rows(n, 4, n)
    out, m = bucketing(x, bucket_size=s, generator=gen(3))
    buckets = math.ceil(n / s)
    assert out.shape == (buckets, 4) and m.shape == (buckets, n)
    assert ((m > 0).sum(dim=0) == 1).all()                          # every row in exactly one bucket
    sizes = (m > 0).sum(dim=1).tolist()
    assert sizes[:-1] == [s] * (buckets - 1) and 1 <= sizes[-1] <= s   # only the last may be smaller
    for b in range(buckets):
        members = torch.nonzero(m[b]).flatten()
        torch.testing.assert_close(out[b], x[members].mean(dim=0), rtol=0, atol=1e-14)
    again, m2 = bucketing(x, bucket_size=s, generator=gen(3))
    assert torch.equal(again, out) and torch.equal(m2, m)          # same seed, same buckets


def test_bucketing_over_several_column_blocks_sums_in_float64_and_rounds_once():
    """float32 rows over several of the mixing's column blocks (and a partial last one): each bucket is
    its rows' weighted sum in float64, in row order, rounded once to float32 (40 rows in buckets of 3: the
    sparse path, at most n/8 rows per bucket)."""
    from brmtrl.aggregators.columns import block_columns

    n, s = 40, 3
    d = 2 * block_columns(n) + 9
    x = torch.randn(n, d, generator=gen(4)) * 1e3
    out, m = bucketing(x, bucket_size=s, generator=gen(2))
    assert out.dtype == torch.float32
    for b in range(m.shape[0]):
        members = torch.nonzero(m[b]).flatten().tolist()
        want = sum((x[i].double() * m[b, i] for i in members[1:]), x[members[0]].double() * m[b, members[0]])
        assert torch.equal(out[b], want.float()), b


def test_bucketing_of_size_one_permutes_the_rows():
    x = rows(9, 5, 1)
    out, m = bucketing(x, bucket_size=1, generator=gen(0))
    perm = m.argmax(dim=1)
    assert sorted(perm.tolist()) == list(range(9)) and torch.equal(out, x[perm])


def test_chained_pre_steps_and_trust_through_the_mixing_matrices():
    x = rows(10, 6, 2)
    x[4] = 1e3
    res = aggregate("geometric_median", x, pre=["nnm", "bucketing"], f=2, bucket_size=2, generator=gen(5))
    mixed, m1 = nnm(x, f=2)
    buckets, m2 = bucketing(mixed, bucket_size=2, generator=gen(5))
    inner = agg.geometric_median_trusted(buckets)
    # aggregate runs this chain on x's Gram without computing the mixed rows (MixedRows): the same
    # iterations, rounded differently
    torch.testing.assert_close(res.point, inner.point, rtol=0, atol=1e-9)
    m = m2 @ m1
    np.testing.assert_allclose(res.trust.numpy(), (m.T @ inner.trust / m.sum(dim=0)).numpy(), rtol=1e-6)
    assert res.info["rows_aggregated"] == 5
    assert float(res.trust[4]) < FLAG_BELOW
    # bucketing alone computes its few rows (cheaper than x's Gram): exactly the steps' result
    alone = aggregate("geometric_median", x, pre=["bucketing"], bucket_size=2, generator=gen(5))
    b, _ = bucketing(x, bucket_size=2, generator=gen(5))
    torch.testing.assert_close(alone.point, agg.geometric_median(b), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pre", [["nnm"], ["nnm", "bucketing"], ["bucketing", "nnm"]])
def test_nnm_then_the_geometric_median_never_computes_the_mixed_rows(pre, dtype, monkeypatch):
    """NNM before the geometric median runs on one Gram of x (MixedRows): the same mixing matrices and the
    same median, to the rounding of the rows, as computing the mixed rows; no pass over them."""
    n, d, f = 30, 2000, 6
    x = (1.0 + 0.5 * rows(n, d, 3)).to(dtype)
    x[:f] = 5.0 * rows(f, d, 4).to(dtype)

    def plain() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, mix, g = x, None, gen(7)
        for step in pre:
            y, m = nnm(y, f=f) if step == "nnm" else bucketing(y, bucket_size=2, generator=g)
            mix = m if mix is None else m @ mix
        inner = agg.geometric_median_trusted(y)
        return inner.point, mix.T @ inner.trust / mix.sum(dim=0), mix

    point, trust, mix = plain()
    monkeypatch.setattr(agg.MixedRows, "rows", lambda self: pytest.fail("the mixed rows were computed"))
    seen: list[torch.Tensor] = []
    real = agg.MixedRows.mixed
    monkeypatch.setattr(agg.MixedRows, "mixed", lambda self, m: seen.append(m) or real(self, m))
    extra = {"bucket_size": 2} if "bucketing" in pre else {}
    res_rows = aggregate("geometric_median", x, pre=pre, f=f, generator=gen(7), **extra)
    total = seen[0] if len(seen) == 1 else seen[1] @ seen[0]
    assert torch.equal(total, mix)                                     # the same neighbours and buckets
    spread = float(torch.linalg.vector_norm(x[f:] - x[f:].mean(dim=0), dim=1).median())
    scale = (1e-5 if dtype == torch.float32 else 1e-9) * spread
    assert res_rows.point.dtype == dtype
    assert float(torch.linalg.vector_norm((res_rows.point - point).double())) <= scale
    np.testing.assert_allclose(res_rows.trust.numpy(), trust.numpy(), atol=1e-4)


def test_a_plugged_in_mixing_step_runs_on_the_gram_and_a_bad_matrix_is_named(monkeypatch):
    """register_pre_step(mixing=..., reads_distances=True): a plug-in step that needs only the rows'
    distances joins the Gram-space path; a mixing matrix of the wrong shape is an error naming the step."""
    from brmtrl.aggregators import PRE_STEPS, register_pre_step

    monkeypatch.setattr(agg.MixedRows, "rows", lambda self: pytest.fail("the mixed rows were computed"))
    x = rows(9, 40, 6)

    def pairs(view: agg.MixedRows) -> torch.Tensor:    # each row with its nearest other row
        d2 = torch.from_numpy(view.sq_distances())
        d2.fill_diagonal_(math.inf)
        m = torch.eye(view.n, dtype=torch.float64) / 2
        m[torch.arange(view.n), d2.argmin(dim=1)] += 0.5
        return m

    monkeypatch.setitem(PRE_STEPS, "pairs", PRE_STEPS["nnm"])   # restored after the test
    register_pre_step("pairs", lambda x: (pairs(agg.MixedRows(x)) @ x, pairs(agg.MixedRows(x))),
                      mixing=pairs, reads_distances=True)
    res = aggregate("geometric_median", x, pre=["pairs"])
    want = agg.geometric_median(pairs(agg.MixedRows(x)) @ x)
    torch.testing.assert_close(res.point, want, rtol=0, atol=1e-6)     # the median's tol (1e-8) × its spread
    register_pre_step("pairs", lambda x: x, mixing=lambda view: torch.ones(2, 3), reads_distances=True)
    with pytest.raises(ValueError, match=r"step 'pairs' returned a mixing matrix of shape \(2, 3\) for 9 rows"):
        aggregate("geometric_median", x, pre=["pairs"])


def test_mixed_rows_beyond_float64s_range_of_squares_are_computed():
    """x's Gram needed the overflow guard's rescaled pass: MixedRows computes the rows and the median is
    the plain path's."""
    x = rows(11, 50, 5)
    x[3] = 1e300
    res = aggregate("geometric_median", x, pre=["nnm"], f=2)
    y, m = nnm(x, f=2)
    torch.testing.assert_close(res.point, agg.geometric_median(y), rtol=1e-12, atol=1e-12)
    assert float(res.trust[3]) < FLAG_BELOW


# --------------------------------------------------------------------------- trust
ROBUST = ["geometric_median", "krum", "multi_krum", "bulyan", "median", "trimmed_mean", "centered_clipping"]


def outliers(m: float, n: int = 11, d: int = 500, bad: tuple[int, ...] = (2, 7)) -> torch.Tensor:
    x = rows(n, d, 9)
    signs = torch.where(rows(1, d, 10)[0] > 0, 1.0, -1.0).to(torch.float64)
    for i in bad:
        x[i] = m * signs
    return x


def kwargs_for(rule: str, n: int = 11) -> dict:
    entry = AGGREGATORS[rule]
    return {"f": min(2, entry.largest_f(n))} if "f" in entry.params else {}


@pytest.mark.parametrize("m", [1e3, 1e30])
@pytest.mark.parametrize("rule", ROBUST)
def test_trust_of_outliers_is_low_and_of_honest_rows_high(rule, m):
    bad = (2, 7)
    x = outliers(m, bad=bad)
    res = aggregate(rule, x, **kwargs_for(rule))
    trust = res.trust
    assert trust.dtype == torch.float64 and trust.shape == (11,) and ((0 <= trust) & (trust <= 1)).all()
    honest = [i for i in range(11) if i not in bad]
    assert (trust[list(bad)] < FLAG_BELOW).all(), trust
    if rule == "krum":             # one row selected, an honest one
        assert int((trust == 1).sum()) == 1 and int(torch.argmax(trust)) in honest
    elif rule == "bulyan":         # θ = n − 2f rows selected, at most f of them outliers (the paper's last
        # Krum picks count r − f − 2 = 1 neighbour, so the two outliers may pick each other); the
        # coordinate stage then keeps none of their values
        assert 11 - 2 * 2 - 2 <= int((trust[honest] >= FLAG_BELOW).sum()) <= 11 - 2 * 2
    else:
        assert (trust[honest] >= FLAG_BELOW).all(), trust
    assert torch.equal(res.flagged, trust < FLAG_BELOW)


@pytest.mark.parametrize("pre", [["nnm"], ["bucketing"], ["nnm", "bucketing"]])
@pytest.mark.parametrize("rule", ["geometric_median", "centered_clipping", "median", "multi_krum"])
def test_trust_of_an_outlier_is_low_through_pre_steps(rule, pre):
    x = outliers(1e3, bad=(4,))
    params = {"f": 1, "bucket_size": 2} if "bucketing" in pre else {"f": 1}
    if "f" not in AGGREGATORS[rule].params and "nnm" not in pre:
        params.pop("f")
    res = aggregate(rule, x, pre=pre, generator=gen(1), **params)
    assert float(res.trust[4]) < FLAG_BELOW
    if pre == ["nnm"]:
        assert (res.trust[[i for i in range(11) if i != 4]] >= FLAG_BELOW).all()


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "bulyan"])
def test_identical_rows_share_the_trust_of_a_coordinate(rule):
    # ties: which of several equal values a sort keeps must not decide who is trusted
    x = torch.ones(11, 20, dtype=torch.float64)
    x[3] = 1e3
    trust = aggregate(rule, x, **kwargs_for(rule)).trust
    honest = trust[[i for i in range(11) if i != 3]]
    assert float(trust[3]) == 0.0
    assert int((honest >= FLAG_BELOW).sum()) == (11 - 4 if rule == "bulyan" else 10)


def test_mean_trusts_every_row():
    res = aggregate("mean", outliers(1e30))
    assert torch.equal(res.trust, torch.ones(11, dtype=torch.float64)) and not res.flagged.any()


def test_trust_is_read_off_what_the_rule_computed():
    # geometric median: min(1, median distance / own distance) to the point, from the Weiszfeld weights
    x = outliers(1e3)
    res = aggregate("geometric_median", x, tol=1e-12)
    dist = torch.linalg.vector_norm(x - res.point, dim=1)
    np.testing.assert_allclose(res.trust.numpy(), torch.clamp(dist.median() / dist, max=1.0).numpy(), rtol=1e-3)
    # trimmed mean: fraction of coordinates kept, over the fair share (n − 2f)/n
    x = rows(7, 40, 3)
    s = torch.sort(x, dim=0).indices[1:-1]
    used = torch.bincount(s.flatten(), minlength=7).double() / 40
    np.testing.assert_allclose(aggregate("trimmed_mean", x, f=1).trust.numpy(),
                               torch.clamp(used * 7 / 5, max=1).numpy())


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call,match", [
    (lambda: bulyan(rows(10, 3), f=2), r"bulyan: cannot tolerate f=2 Byzantine rows among n=10; it needs n >= 11"),
    (lambda: bulyan(rows(10, 3), f=-1), r"bulyan: f must be an int >= 0. Got -1 instead"),
    (lambda: bulyan(rows(10, 3), f=1.5), r"bulyan: f must be an int >= 0. Got 1.5 instead"),
    (lambda: centered_clipping(rows(5, 3), tau=-1.0), r"centered_clipping: tau must be a float >= 0. Got -1.0 instead"),
    (lambda: centered_clipping(rows(5, 3), tau=float("inf")), r"centered_clipping: tau must be a float >= 0. Got inf"),
    (lambda: centered_clipping(rows(5, 3), iters=0), r"centered_clipping: iters must be an int >= 1. Got 0 instead"),
    (lambda: centered_clipping(rows(5, 3), centre=torch.zeros(4)), r"centre must be a finite floating-point tensor "
                                                                     r"of shape \(3,\). Got a torch.float32 tensor of shape \(4,\)"),
    (lambda: nnm(rows(5, 3), f=3), r"nnm: cannot tolerate f=3 Byzantine rows among n=5; it needs n >= 7"),
    (lambda: bucketing(rows(5, 3), bucket_size=0), r"bucketing: bucket_size must be an int >= 1. Got 0 instead"),
    (lambda: bucketing(rows(5, 3), generator=3), r"bucketing: generator must be a CPU torch.Generator or None. Got 3"),
    (lambda: aggregate("average", rows(5, 3)), r"aggregate: unknown rule 'average'; expected one of 'bulyan'"),
    (lambda: aggregate("mean", rows(5, 3), pre=["nnn"]), r"unknown pre-aggregation step 'nnn'; expected one of 'arc', 'bucketing', 'nnm'"),
    (lambda: aggregate("mean", rows(5, 3), pre="nnm"), r"pre must be a sequence of step names"),
    (lambda: aggregate("mean", rows(5, 3), tau=1.0), r"aggregate: mean with pre=\[\] takes no parameter 'tau'"),
    (lambda: aggregate("median", torch.zeros(3)), r"median: expected a 2-D tensor"),
])
def test_invalid_parameters_give_errors_naming_them(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# --------------------------------------------------------------------------- config and server
def test_config_names_match_the_registries():
    assert set(CONFIG_RULES) - {"auto"} == set(AGGREGATORS)
    assert set(CONFIG_PRE) == set(PRE_STEPS)


@pytest.mark.parametrize("overrides,needle", [
    (["aggregator.pre=[\"nnm\", \"bucket\"]"], "config key 'aggregator.pre' must be a list of items, each one of 'nnm'"),
    (["aggregator.pre=\"nnm\""], "config key 'aggregator.pre' must be a list"),
    (["aggregator.bucket_size=0"], "config key 'aggregator.bucket_size' must be an int in the range [1, inf)"),
    (["aggregator.tau=-1"], "config key 'aggregator.tau' must be a float in the range [0, inf)"),
    (["aggregator.iters=0"], "config key 'aggregator.iters' must be an int in the range [1, inf)"),
])
def test_config_errors_for_the_new_keys(overrides, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    assert needle in str(exc.value)


def test_f_auto_respects_bulyans_4f_plus_3_and_explicit_f_is_checked(tiny_cfg):
    cfg = tiny_cfg("aggregator.name=bulyan", "aggregator.byzantine_fraction=0.3")
    a = Aggregation.from_config(cfg, per_round=10, pool=20)
    assert a.f == 1                                     # 4f + 3 <= 10
    with pytest.raises(ConfigError, match=r"'aggregator.f' = 2 is too large for bulyan"):
        Aggregation.from_config(tiny_cfg("aggregator.name=bulyan", "aggregator.f=2"), 10, 20)
    # after bucketing Krum sees ⌈10/2⌉ = 5 rows: f <= 1
    b = Aggregation.from_config(tiny_cfg("aggregator.name=krum", "aggregator.pre=[\"bucketing\"]",
                                         "aggregator.byzantine_fraction=0.3"), 10, 20)
    assert b.f == 1 and b.pre == ("bucketing",) and b.params == {"bucket_size": 2}
    with pytest.raises(ConfigError, match=r"needs at least 3 clients per round, but .* \(2 after aggregator.pre"):
        Aggregation.from_config(tiny_cfg("aggregator.name=krum", "aggregator.pre=[\"bucketing\"]",
                                         "aggregator.bucket_size=3"), 6, 20)


def test_server_step_records_trust_and_flagged_and_seeds_bucketing():
    x = outliers(1e3, n=9, d=50, bad=(3,))
    updates, clients = list(x), [10 + i for i in range(9)]
    a = Aggregation("centered_clipping", 1, {"tau": 0.0, "iters": 3, "bucket_size": 3}, 0.0, ("bucketing",))
    s1 = server_step(updates, clients, a, size=50, round_=4, seed=7)
    s2 = server_step(updates, clients, a, size=50, round_=4, seed=7)
    assert s1.info["trust"] == s2.info["trust"] and torch.equal(s1.step, s2.step)
    assert len(s1.info["trust"]) == len(s1.accepted) == 9 and 13 in s1.info["flagged"]
    assert s1.info["flagged"] == [c for c, t in zip(s1.accepted, s1.info["trust"]) if t < FLAG_BELOW]
    p1 = torch.randperm(9, generator=pre_generator(7, 4))
    assert torch.equal(p1, torch.randperm(9, generator=pre_generator(7, 4)))
    assert not torch.equal(p1, torch.randperm(9, generator=pre_generator(7, 5)))
    # a rejected update is not in the trust list
    bad = updates[:]
    bad[0] = torch.full((50,), float("nan"), dtype=torch.float64)
    s3 = server_step(bad, clients, Aggregation("geometric_median"), size=50)
    assert s3.accepted == clients[1:] and len(s3.info["trust"]) == 8 and s3.info["flagged"] == [13]


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("extra, identifies", [
    (["aggregator.name=bulyan", "aggregator.pre=[]"], True),
    # NNM mixes every row with its n − f nearest and bucketing averages pairs: no row stands out, so
    # centered clipping (τ > 0) trusts every one; it used to flag rows only because τ had fallen to 0
    (["aggregator.name=centered_clipping", "aggregator.pre=[\"nnm\", \"bucketing\"]"], False),
])
def test_brmtrl_run_records_trust_and_flagged(extra, identifies, tmp_path):
    out = tmp_path / "run"
    sets = ["train.rounds=2", "dataset.num_clients=10", "dataset.samples_per_client=20", "train.eval_every=1",
            "device=cpu", "train.participation=1.0", *extra]
    args = ["run", "--config", str(CONFIGS / "quick.toml"), "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    rounds = res["identification"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    byz = set(res["final"]["byzantine_clients"])
    for r in rounds:
        assert len(r["trust"]) == len(r["accepted"]) == 10 and all(0.0 <= t <= 1.0 for t in r["trust"])
        assert r["flagged"] == sorted(c for c, t in zip(r["accepted"], r["trust"]) if t < FLAG_BELOW)
        if identifies:
            assert byz <= set(r["flagged"])             # sign-flipping ×5: far from the honest updates
    for h in res["history"]:
        assert h.get("tau", 1.0) > 0


def test_centered_clipping_can_start_from_the_previous_aggregate(tiny_cfg, tmp_path):
    """aggregator.centre = 'previous' (the paper's history): each round's clipping starts from the last
    aggregate; the run differs from the stateless one, and a resumed run gives the same numbers."""
    from brmtrl.engine import Simulation

    base = ("aggregator.name=centered_clipping", "attack.name=sign_flip", "attack.byzantine_fraction=0.2",
            "train.rounds=4", "train.checkpoint_every=1")
    hist = Simulation(tiny_cfg(*base, "aggregator.centre=previous"))
    res = hist.run()
    assert hist.last_step is not None
    plain = Simulation(tiny_cfg(*base)).run()
    assert res["final"]["honest_acc_mean"] != plain["final"]["honest_acc_mean"] or \
        res["final"]["honest_loss_mean"] != plain["final"]["honest_loss_mean"]
    # the server step uses the given centre
    x = rows(7, 5)
    agg = Aggregation("centered_clipping", params={"tau": 0.5, "iters": 1}, history=True)
    centre = torch.full((5,), 3.0, dtype=torch.float64)
    got = server_step(list(x), list(range(7)), agg, size=5, centre=centre).step
    assert torch.allclose(got, centered_clipping(x, tau=0.5, iters=1, centre=centre))
    assert not torch.allclose(got, centered_clipping(x, tau=0.5, iters=1))
    # resume: stop after round 2, continue, same numbers
    first = Simulation(tiny_cfg(*base, "aggregator.centre=previous", "train.rounds=2"), out_dir=tmp_path)
    first.run()
    first.checkpoint(2)
    again = Simulation(tiny_cfg(*base, "aggregator.centre=previous"), out_dir=tmp_path)
    again.restore(tmp_path)
    assert torch.equal(again.last_step, first.last_step)
    assert again.run()["final"]["honest_acc_mean"] == res["final"]["honest_acc_mean"]


def test_centre_previous_is_for_centered_clipping_only(tiny_cfg):
    with pytest.raises(ConfigError, match="'aggregator.centre' = 'previous' applies to"):
        tiny_cfg("aggregator.name=geometric_median", "aggregator.centre=previous")


@pytest.mark.parametrize("n", [1, 2, 7, 16, 17, 60])
def test_select_ranks_reads_a_block_of_a_larger_matrix_and_leaves_it_as_it_was(n):
    """The ranks the coordinate-wise rules select, from a strided block of a larger matrix (no copy of the
    block first, above the network's row limit), for each path: network (n ≤ 16), numpy's sort of transposed
    sub-blocks (several, a last partial one), torch.sort (bfloat16); into a given out or a new tensor."""
    from brmtrl.aggregators.columns import SORT_VALUES, rank_work, select_ranks

    g = torch.Generator().manual_seed(n)
    big = torch.randint(-4, 5, (n, 3 * SORT_VALUES // max(n, 1) + 50), generator=g).to(torch.float32)
    big += torch.randn(big.shape, generator=g) * (torch.rand(big.shape, generator=g) < 0.5)   # ties and not
    block = big[:, 7:-11]                                     # strided: a view into big
    before = big.clone()
    want = block.double().sort(dim=0).values
    for ranks in (slice(0, n), slice((n - 1) // 2, n // 2 + 1), slice(n // 3, n - n // 3)):
        if ranks.start >= ranks.stop:
            continue
        got = select_ranks(block, ranks, work=rank_work(big, big.shape[1]))
        assert torch.equal(got.double(), want[ranks]) and torch.equal(big, before), (n, ranks)
        out = torch.full((ranks.stop - ranks.start, block.shape[1]), float("nan"))
        assert select_ranks(block, ranks, out=out) is out and torch.equal(out.double(), want[ranks])
    half = select_ranks(block.to(torch.bfloat16), slice(0, n))   # the torch.sort path (no numpy dtype)
    assert torch.equal(half, block.to(torch.bfloat16).sort(dim=0).values)
