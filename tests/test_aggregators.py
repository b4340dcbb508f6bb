from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from brmtrl.aggregators import (AGGREGATORS, geometric_median, geometric_median_result, krum, mean, median,
                                multi_krum, trimmed_mean, weiszfeld_reference)


def rows(n: int, d: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def sum_dist(z: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm(x - z, axis=1).sum())


@pytest.mark.parametrize("seed", range(5))
def test_geometric_median_minimizes_sum_of_distances(seed):
    x = rows(7, 3, seed)
    gm = geometric_median(x).numpy()
    xn = x.numpy()
    best = minimize(sum_dist, xn.mean(0), args=(xn,), method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    assert sum_dist(gm, xn) <= best.fun + 1e-7
    np.testing.assert_allclose(gm, best.x, atol=1e-4)


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


@pytest.mark.parametrize("rule", ["geometric_median", "krum", "multi_krum", "median", "trimmed_mean"])
def test_bounded_when_minority_is_moved_far_away(rule):
    n, d, f = 11, 20, 4
    x = rows(n, d, 3)
    x[:f] += 1e6
    entry = AGGREGATORS[rule]
    out = entry.fn(x, **({"f": f} if "f" in entry.params else {}))
    honest = x[f:]
    assert float((out - honest.mean(0)).norm()) < 3 * float((honest - honest.mean(0)).norm(dim=1).max())
    assert float(mean(x).norm()) > 1e5  # the mean is not robust


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
    kwargs = {"f": 2} if "f" in entry.params else {}
    torch.testing.assert_close(entry.fn(x, **kwargs), entry.fn(x[perm], **kwargs), atol=1e-10, rtol=0)


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
