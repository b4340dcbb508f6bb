from __future__ import annotations

import numpy as np
import pytest
import torch

from brmtrl.aggregators import (AGGREGATORS, geometric_median, geometric_median_result, krum, mean, median,
                                multi_krum, pairwise_sq_distances, trimmed_mean, weiszfeld_reference)


def rows(n: int, d: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def sum_dist(z: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm(x - z, axis=1).sum())


@pytest.mark.parametrize("seed", range(5))
def test_geometric_median_minimizes_sum_of_distances(seed):
    """The sum of distances f(z) = Σ‖xᵢ − z‖ is convex, so z minimises it exactly when 0 is in its
    subgradient: away from the points, ∇f(z) = Σ (z − xᵢ)/‖z − xᵢ‖ = 0. Checked at the rule's answer (to
    the tolerance its stopping rule leaves), and no point nearby does better."""
    x = rows(7, 3, seed)
    gm = geometric_median(x, tol=1e-12).numpy()
    xn = x.numpy()
    diff = gm - xn
    dist = np.linalg.norm(diff, axis=1)
    assert dist.min() > 1e-6                                      # not at a data point: f is smooth there
    assert np.linalg.norm((diff / dist[:, None]).sum(0)) < 1e-8   # ∇f(gm) = 0 (a sum of 7 unit vectors)
    rng = np.random.default_rng(seed)
    for step in (1e-1, 1e-3):
        nearby = gm + step * rng.standard_normal((200, 3))
        assert min(sum_dist(z, xn) for z in nearby) >= sum_dist(gm, xn) - 1e-12


@pytest.mark.parametrize("n,d", [(5, 4), (10, 1000), (31, 50)])
def test_gram_weiszfeld_matches_plain_weiszfeld(n, d):
    x = rows(n, d, n) * 3 + 100.0  # far from the origin: centring must keep the precision
    res = geometric_median_result(x, tol=1e-12)
    assert res.converged and res.iterations > 1
    assert torch.allclose(res.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(res.point, weiszfeld_reference(x), atol=1e-8, rtol=0)


def test_geometric_median_float32_in_float32_out():
    x = rows(10, 100, 1, torch.float32)
    out = geometric_median(x)
    assert out.dtype == torch.float32 and out.shape == (100,)


@pytest.mark.parametrize("offset", [1e6, 1e12, 1e30])
@pytest.mark.parametrize("rule", ["geometric_median", "krum", "multi_krum", "median", "trimmed_mean", "bulyan",
                                  "centered_clipping"])
def test_bounded_when_minority_is_moved_far_away(rule, offset):
    n, d, f = 11, 20, 4
    if rule == "bulyan":  # needs n >= 4f + 3
        f = 2
    x = rows(n, d, 3)
    x[:f] += offset
    entry = AGGREGATORS[rule]
    out = entry.fn(x, **({"f": f} if "f" in entry.params else {}))
    honest = x[f:]
    assert torch.isfinite(out).all()
    assert float((out - honest.mean(0)).norm()) < 3 * float((honest - honest.mean(0)).norm(dim=1).max())
    assert float(mean(x).norm()) > offset / 10  # the mean is not robust


def test_krum_returns_an_honest_row():
    honest = rows(8, 5, 4) * 0.1
    byz = rows(3, 5, 5) * 10 + 5
    x = torch.cat([byz, honest])
    out = krum(x, f=3)
    assert any(torch.equal(out, h) for h in honest)


def test_krum_known_answer():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, 0.2], [100.0, 100.0]])
    assert torch.equal(krum(x, f=1), torch.tensor([0.2, 0.2]))
    assert torch.equal(multi_krum(x, f=1, m=1), krum(x, f=1))


@pytest.mark.parametrize("rule", sorted(AGGREGATORS))
def test_permutation_invariance(rule):
    x = rows(9, 6, 7)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    entry = AGGREGATORS[rule]
    kwargs = {"f": min(2, entry.largest_f(9))} if "f" in entry.params else {}
    torch.testing.assert_close(entry.fn(x, **kwargs), entry.fn(x[perm], **kwargs), atol=1e-10, rtol=0)


@pytest.mark.parametrize("rule", sorted(AGGREGATORS))
def test_rows_that_require_grad_are_aggregated_as_their_values(rule):
    """Rows still attached to autograd (an attack or a user's own pipeline) give the same point as their
    detached values, with every pre-step too, not an error from the numpy kernels inside."""
    from brmtrl.aggregators import PRE_STEPS, aggregate

    x = rows(17, 300, 5).float()
    entry = AGGREGATORS[rule]
    kwargs = {"f": min(2, entry.largest_f(7))} if "f" in entry.params else {}
    for pre in [[]] + [[step] for step in sorted(PRE_STEPS)]:
        extra = {"f": 2} if "nnm" in pre or "arc" in pre else {}
        if "bucketing" in pre:
            extra["generator"] = torch.Generator().manual_seed(0)
        got = aggregate(rule, x.clone().requires_grad_(True), pre=pre, **{**kwargs, **extra})
        if "bucketing" in pre:
            extra["generator"] = torch.Generator().manual_seed(0)
        want = aggregate(rule, x, pre=pre, **{**kwargs, **extra})
        assert not got.point.requires_grad and torch.equal(got.point, want.point), pre


@pytest.mark.parametrize("rule", sorted(AGGREGATORS))
def test_largest_f_is_what_the_rule_accepts(rule):
    entry = AGGREGATORS[rule]
    if "f" not in entry.params:
        return
    for n in (3, 4, 7, 10):
        f = entry.largest_f(n)
        entry.fn(rows(n, 3), f=f)
        with pytest.raises(ValueError, match="cannot tolerate"):
            entry.fn(rows(n, 3), f=f + 1)


def test_known_answers_for_coordinate_rules():
    x = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [100.0, -100.0], [4.0, 40.0]])
    assert torch.equal(median(x), torch.tensor([3.0, 20.0]))
    torch.testing.assert_close(trimmed_mean(x, f=1), torch.tensor([3.0, 20.0]))
    torch.testing.assert_close(mean(x), torch.tensor([22.0, 0.0]))


def test_geometric_median_of_collinear_points_is_the_middle_one():
    x = torch.tensor([[0.0], [1.0], [5.0]], dtype=torch.float64)
    torch.testing.assert_close(geometric_median(x, tol=1e-12), torch.tensor([1.0], dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("call,match", [
    (lambda: krum(rows(4, 3), f=1), r"cannot tolerate f=1 .* n=4"),
    (lambda: krum(rows(5, 3), f=-1), r"f must be an int >= 0"),
    (lambda: mean(torch.zeros(3)), r"2-D tensor"),
    (lambda: multi_krum(rows(7, 3), f=1, m=9), r"m must be an int in \[1, n=7\]"),
    (lambda: geometric_median(rows(3, 2), tol=-1.0), r"tol must be a float > 0"),
    (lambda: trimmed_mean(rows(4, 2), f=2), r"cannot tolerate f=2"),
])
def test_errors_name_the_problem(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_public_import_contract():
    from brmtrl.aggregators import geometric_median, krum, mean, multi_krum  # noqa: F401

    x = rows(7, 4)
    for out in (mean(x), geometric_median(x), krum(x, f=1), multi_krum(x, f=1, m=3)):
        assert out.dim() == 1 and out.shape[0] == 4


def test_docstring_examples():
    import doctest

    import brmtrl.aggregators as module

    assert doctest.testmod(module).failed == 0


# --------------------------------------------------------------------------- huge values (issue 10)
# Independent float64 oracles (numpy, no Gram matrix): distances of halved differences rescaled by their
# largest entry, so nothing overflows even next to float64's maximum.
def safe_norms(v: np.ndarray) -> np.ndarray:
    v = np.atleast_2d(v) * 0.5
    m = np.abs(v).max(axis=1)
    with np.errstate(over="ignore"):
        return 2.0 * m * np.linalg.norm(v / np.where(m > 0, m, 1.0)[:, None], axis=1)


def exact_sq_dists(x: torch.Tensor) -> np.ndarray:
    xn = x.double().numpy()
    with np.errstate(over="ignore"):
        return np.stack([safe_norms(xn - row) ** 2 for row in xn])


def exact_gm(x: torch.Tensor, eps: float = 1e-8) -> np.ndarray:
    """Smoothed Weiszfeld on the rows, z ← z + Σ min(1, dᵢ/ν) uᵢ / Σ 1/max(ν, dᵢ) (uᵢ the unit vector to
    row i), so that a row beyond float64's range of distances still pulls with its direction."""
    # work about the coordinate-wise median c (exact for rows near c), so that the stopping rule can be
    # relative to the distances even when the rows sit far from the origin
    c = np.median(x.double().numpy(), axis=0)
    with np.errstate(over="ignore"):
        xn = x.double().numpy() - c
    if not np.isfinite(xn).all():
        xn, c = x.double().numpy(), np.zeros_like(c)
    z = np.zeros_like(c) if c.any() else np.median(xn, axis=0)
    for _ in range(100_000):
        v = xn * 0.5 - z * 0.5
        m = np.abs(v).max(axis=1)
        v = v / np.where(m > 0, m, 1.0)[:, None]
        r = np.linalg.norm(v, axis=1)
        u = v / np.where(r > 0, r, 1.0)[:, None]
        with np.errstate(over="ignore"):
            dist = 2.0 * m * r
        step = (np.minimum(dist / eps, 1.0)[:, None] * u).sum(axis=0) / (1.0 / np.maximum(dist, eps)).sum()
        z = z + step
        if np.linalg.norm(step) <= 1e-15 * max(float(np.median(dist)), eps):
            return z + c
    raise AssertionError("oracle did not converge")


def exact_krum_scores(x: torch.Tensor, f: int) -> np.ndarray:
    d2 = exact_sq_dists(x)
    np.fill_diagonal(d2, np.inf)
    return np.sort(d2, axis=1)[:, :x.shape[0] - f - 2].sum(axis=1)


def one_huge_row(m: float, n: int = 10, d: int = 5000, sigma: float = 0.01, seed: int = 0, dtype=torch.float64):
    """The reproduction of issue 10: n − 1 rows ~ N(0, σ²), row 0 uniform in ±M."""
    g = torch.Generator().manual_seed(seed)
    x = sigma * torch.randn(n, d, generator=g, dtype=torch.float64)
    x[0] = (torch.rand(d, generator=g, dtype=torch.float64) * 2 - 1) * m
    return x.to(dtype)


def median_distance(x: torch.Tensor, z: np.ndarray) -> float:
    return float(np.median(safe_norms(x.double().numpy() - z)))


@pytest.mark.parametrize("tol", [1e-8, 1e-11])
@pytest.mark.parametrize("m", [1e3, 1e8, 1e12, 1e30, 1e300, 1.7e308])
def test_geometric_median_is_exact_next_to_one_huge_row(m, tol):
    x = one_huge_row(m)
    res = geometric_median_result(x, tol=tol)
    ref = exact_gm(x)
    err = float(safe_norms(res.point.numpy() - ref)[0])
    assert res.converged  # and truthfully so:
    assert err <= tol * median_distance(x, ref), err
    assert np.isfinite(res.weights.numpy()).all() and abs(float(res.weights.sum()) - 1.0) < 1e-12


@pytest.mark.parametrize("m", [1e3, 1e12, 1e30, 3e38])
def test_geometric_median_float32_next_to_one_huge_row(m):
    x = one_huge_row(m, dtype=torch.float32)
    res = geometric_median_result(x)
    ref = exact_gm(x)
    assert res.point.dtype == torch.float32 and res.converged
    # float32 output: within a few float32 roundings of the exact median
    assert float(safe_norms(res.point.double().numpy() - ref)[0]) <= 1e-7 * median_distance(x, ref)


def test_converged_is_false_when_the_iterations_run_out():
    x = one_huge_row(1e12)
    res = geometric_median_result(x, tol=1e-12, max_iter=2)
    assert not res.converged and res.iterations == 2


def test_slowly_converging_geometric_median_stops_within_tolerance():
    # a row next to the honest rows' median: Weiszfeld converges slowly (rate ~0.8), so a small step alone
    # does not mean a small error; the stopping rule accounts for the observed rate
    g = torch.Generator().manual_seed(1)
    x = 0.01 * torch.randn(11, 5000, generator=g, dtype=torch.float64)
    x[0] = torch.from_numpy(exact_gm(x[1:]))
    x[1] = 1e30
    for tol in (1e-8, 1e-10):
        res = geometric_median_result(x, tol=tol)
        ref = exact_gm(x)
        assert res.converged
        assert float(safe_norms(res.point.numpy() - ref)[0]) <= tol * median_distance(x, ref)


def outlier_rows(m: float, n: int = 10, d: int = 1000, seed: int = 11) -> torch.Tensor:
    """9 honest rows 1 + 10⁻⁶·N(0, 1) (tiny spread: distances resolved only about a central row), row 3
    uniform in ±M."""
    g = torch.Generator().manual_seed(seed)
    x = 1.0 + 1e-6 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x[3] = (torch.rand(d, generator=g, dtype=torch.float64) * 2 - 1) * m
    return x


@pytest.mark.parametrize("m", [1e3, 1e8, 1e12, 1e30])
@pytest.mark.parametrize("rule", ["geometric_median", "krum", "multi_krum", "median", "trimmed_mean"])
def test_every_robust_rule_is_exact_next_to_a_huge_outlier(rule, m):
    x = outlier_rows(m)
    xn = x.numpy()
    if rule == "geometric_median":
        ref = exact_gm(x)
        assert float(safe_norms(geometric_median(x).numpy() - ref)[0]) <= 1e-8 * median_distance(x, ref)
    elif rule == "krum":   # the row Krum picks with exact distances
        assert torch.equal(krum(x, f=1), x[int(np.argmin(exact_krum_scores(x, 1)))])
    elif rule == "multi_krum":
        best = np.argsort(exact_krum_scores(x, 1), kind="stable")[:3]
        np.testing.assert_allclose(multi_krum(x, f=1, m=3).numpy(), xn[best].mean(axis=0), rtol=1e-15, atol=0)
    elif rule == "median":
        np.testing.assert_array_equal(median(x).numpy(), np.median(xn, axis=0))
    else:
        np.testing.assert_allclose(trimmed_mean(x, f=1).numpy(), np.sort(xn, axis=0)[1:-1].mean(axis=0),
                                   rtol=1e-15, atol=0)


@pytest.mark.parametrize("m", [1e3, 1e8, 1e30, 1e300])
def test_pairwise_sq_distances_keep_honest_pairs_exact_next_to_a_huge_row(m):
    x = outlier_rows(m)
    got, ref = pairwise_sq_distances(x).numpy(), exact_sq_dists(x)
    honest = [i for i in range(x.shape[0]) if i != 3]
    np.testing.assert_allclose(got[np.ix_(honest, honest)], ref[np.ix_(honest, honest)], rtol=1e-9, atol=0)
    far = got[3, honest]
    assert not np.isnan(got).any()
    if m < 1e150:
        np.testing.assert_allclose(far, ref[3, honest], rtol=1e-12)
    else:   # beyond float64's range
        assert np.isinf(far).all()


@pytest.mark.parametrize("m", [1e30, 3e38])
def test_krum_and_geometric_median_float32_with_overflowing_squares(m):
    x = outlier_rows(1.0).float()
    x[3] = m
    assert torch.equal(krum(x, f=1), x[int(np.argmin(exact_krum_scores(x, 1)))])
    ref = exact_gm(x)
    # the honest spread (10⁻⁶) is a few float32 ulps: the float32 result is the exact median rounded to
    # float32, within one ulp per coordinate
    got = geometric_median(x)
    assert got.dtype == torch.float32
    assert (np.abs(got.double().numpy() - ref) <= 2.0 ** -23 * np.abs(ref)).all()


def test_krum_resists_an_attacker_that_looks_central_on_sampled_columns():
    # The first Gram centre is the row nearest the coordinate-wise median of a few columns; rows that
    # copy that median on every 16th block and are huge elsewhere must not spoil the distances.
    n, d, f = 11, 4096, 4
    x = outlier_rows(0.0, n=n, d=d)
    med = x[f:].median(dim=0).values
    for i in range(f):
        x[i] = torch.where(torch.arange(d) % 256 < 16, med, torch.full((d,), 1e200, dtype=torch.float64))
        x[i, 0] = med[0]
    assert torch.equal(krum(x, f=f), x[int(np.argmin(exact_krum_scores(x, f)))])
    ref = exact_gm(x)
    res = geometric_median_result(x)
    assert res.converged and float(safe_norms(res.point.numpy() - ref)[0]) <= 1e-8 * median_distance(x, ref)


def test_weiszfeld_reference_is_safe_near_float64_max():
    for m in (1e300, 1.7e308):
        x = one_huge_row(m, d=500)
        ref = exact_gm(x, eps=1e-12)
        got = weiszfeld_reference(x, tol=1e-14)
        assert float(safe_norms(got.numpy() - ref)[0]) <= 1e-10 * median_distance(x, ref)


def test_median_of_even_n_averages_the_middle_two():
    x = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [100.0, -100.0]])
    out = median(x)
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor([3.0, 15.0]))
    # the average is taken in float64: no overflow at float64's maximum, no loss of the last bit
    big = torch.tensor([[1.7e308], [1.0], [1.6e308], [1.79e308]], dtype=torch.float64)
    assert torch.equal(median(big), torch.tensor([0.5 * 1.6e308 + 0.5 * 1.7e308], dtype=torch.float64))
    tiny = torch.tensor([[1.0], [1.0 + 2.0 ** -52], [0.0], [5.0]], dtype=torch.float64)
    assert torch.equal(median(tiny), torch.tensor([1.0 + 2.0 ** -53], dtype=torch.float64))


def test_median_of_even_n_is_unbiased():
    # the lower median of 10 standard normal values has mean ≈ −0.12; the average of the two middle ones 0
    x = torch.randn(10, 20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(median(x).mean())) < 0.015    # 5 standard errors of the mean of 20 000 medians
