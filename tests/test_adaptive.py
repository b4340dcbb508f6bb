"""Attacks that know the defense and adaptive robust clipping (issue 18): each against a plain reference
loop written here from its formula, the tailored attacks never weaker than the blind ones on the same
inputs, and the simulated adversary tuning itself against exactly what the server computes. On Flower's
simulation engine an adaptive attack runs as on the built-in one: test_flower.py (one Ray start for both)."""

from __future__ import annotations

import math

import pytest
import torch

from brmtrl import attacks as A
from brmtrl.aggregators import PRE_STEPS, aggregate, arc, arc_count, geometric_median, mean
from brmtrl.attacks.search import line_search
from brmtrl.server import Aggregation, server_step


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def honest_rows(h: int = 12, d: int = 25, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    return torch.randn(h, d, generator=g, dtype=torch.float64) + 0.2 * torch.linspace(-1, 1, d, dtype=torch.float64)


def ref_line_search(objective, start, delta, evals, ratio=0.8, lower=-math.inf):
    """The search as docs/aggregators.md states it, one evaluation at a time."""
    xs, ys = [start], [objective(start)]
    best = 0
    phase = "expand"
    while len(xs) < evals:
        if phase == "expand":
            xs.append(xs[best] + delta)
            ys.append(objective(xs[-1]))
            if ys[-1] > ys[best]:
                best = len(xs) - 1
                delta *= 2
            else:
                delta *= ratio
                phase = "contract"
            continue
        for x in (xs[best] + delta, xs[best] - delta):
            if len(xs) == evals or x < lower:
                continue
            xs.append(x)
            ys.append(objective(x))
            if ys[-1] > ys[best]:
                best = len(xs) - 1
                break
        delta *= ratio
    return xs[best], ys[best]


@pytest.mark.parametrize("start, delta, evals, lower", [(0.0, 1.0, 20, -math.inf), (3.0, 0.5, 7, 0.0),
                                                         (-2.0, 10.0, 1, -math.inf), (0.1, 0.1, 15, 0.0)])
def test_line_search_matches_the_plain_loop_and_finds_the_peak(start, delta, evals, lower):
    f = lambda x: -(x - 4.2) ** 2 + math.sin(3 * x)            # noqa: E731
    assert line_search(f, start=start, delta=delta, evals=evals, lower=lower) == \
        pytest.approx(ref_line_search(f, start, delta, evals, lower=lower))
    x, y = line_search(f, start=start, delta=delta, evals=evals, lower=lower)
    assert y >= f(start) and x >= lower


def test_line_search_rejects_bad_settings_and_counts_nan_as_worst():
    with pytest.raises(ValueError, match="delta must be a positive"):
        line_search(lambda x: x, start=0.0, delta=0.0)
    with pytest.raises(ValueError, match="evals must be >= 1"):
        line_search(lambda x: x, start=0.0, delta=1.0, evals=0)
    assert line_search(lambda x: float("nan") if x > 0 else 1.0, start=0.0, delta=1.0, evals=5) == (0.0, 1.0)


def server_of(rule: str, pre=(), f: int = 3):
    agg = Aggregation(rule, f, {}, pre=tuple(pre))

    def point(x: torch.Tensor) -> torch.Tensor:
        from brmtrl.server import aggregate as server_aggregate

        return server_aggregate(x, agg)[0]

    return agg, point


def crafted(name: str, honest: torch.Tensor, b: int, point, **kw) -> torch.Tensor:
    """What the attack sends when the Byzantine rows come first in the round, and the server's rule is point."""
    x = torch.cat([torch.zeros(b, honest.shape[1], dtype=honest.dtype), honest])
    mask = torch.tensor([True] * b + [False] * honest.shape[0])
    cfg = {"attack.name": name, **{f"attack.{k}": v for k, v in kw.items()}}
    return A.server_attack(cfg, gen(1), point if A.ATTACKS[name].adaptive else None)(x, mask)


def dev(point, x: torch.Tensor, mu: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(point(x) - mu))


CASES = [("mean", ()), ("geometric_median", ()), ("centered_clipping", ()), ("geometric_median", ("nnm",)),
         ("centered_clipping", ("arc", "nnm")), ("trimmed_mean", ())]


@pytest.mark.parametrize("rule, pre", CASES)
def test_opt_alie_is_alie_at_the_searched_factor_and_moves_the_aggregate_at_least_as_far(rule, pre):
    honest = honest_rows()
    b, mu, sigma = 3, honest.mean(0), honest.std(0, correction=1)
    _, point = server_of(rule, pre)
    x = crafted("opt_alie", honest, b, point, evals=20)
    sent = x[0]
    assert torch.equal(x[0], x[1]) and torch.equal(x[b:], honest)
    # reference: the same search, written as a loop, on τ ↦ ‖aggregate(μ + τσ) − μ‖
    z = A.alie_z(honest.shape[0] + b, b)

    def objective(t):
        trial = torch.cat([(mu + t * sigma).expand(b, -1), honest])
        return dev(point, trial, mu)

    tau, _ = ref_line_search(objective, -max(z, 0.0), 1.0, 20)
    torch.testing.assert_close(sent, mu + tau * sigma)
    blind = torch.cat([A.alie(torch.zeros(b, 25, dtype=torch.float64), honest, generator=gen()), honest])
    assert dev(point, x, mu) >= dev(point, blind, mu) - 1e-12


@pytest.mark.parametrize("rule, pre", CASES)
def test_opt_ipm_is_ipm_at_the_searched_epsilon_and_moves_the_aggregate_at_least_as_far(rule, pre):
    honest = honest_rows(seed=2)
    b, mu = 3, honest.mean(0)
    _, point = server_of(rule, pre)
    x = crafted("opt_ipm", honest, b, point, evals=12, epsilon=0.1)

    def objective(e):
        return dev(point, torch.cat([(-e * mu).expand(b, -1), honest]), mu)

    eps, _ = ref_line_search(objective, 0.1, 0.1, 12, lower=0.0)
    torch.testing.assert_close(x[0], -eps * mu)
    blind = torch.cat([A.ipm(torch.zeros(b, 25, dtype=torch.float64), honest, generator=gen(), epsilon=0.1), honest])
    assert dev(point, x, mu) >= dev(point, blind, mu) - 1e-12


def test_opt_ipm_against_the_mean_grows_without_bound_with_the_search():
    honest = honest_rows(seed=3)
    _, point = server_of("mean")
    mu = honest.mean(0)
    few, many = (dev(point, crafted("opt_ipm", honest, 3, point, evals=e, epsilon=0.1), mu) for e in (3, 12))
    assert many > 10 * few


@pytest.mark.parametrize("name", ["min_max", "min_sum"])
@pytest.mark.parametrize("rule, pre", CASES)
def test_tailored_min_max_and_min_sum_deviate_at_least_as_far_as_the_blind_attack(name, rule, pre):
    honest = honest_rows(seed=4)
    b, mu = 3, honest.mean(0)
    _, point = server_of(rule, pre)
    extra = {"sum_bound": "max"} if name == "min_sum" else {}
    blind = crafted(name, honest, b, point, tailored=False, evals=20, perturbation="std", **extra)
    tailored = crafted(name, honest, b, point, tailored=True, evals=20, perturbation="std", **extra)
    assert dev(point, tailored, mu) >= dev(point, blind, mu) - 1e-12
    # same direction, another γ: μ + γ(−σ)
    sigma = honest.std(0, correction=1)
    gamma = float(((mu - tailored[0]) @ sigma) / (sigma @ sigma))
    torch.testing.assert_close(tailored[0], mu - gamma * sigma)
    assert gamma >= 0


def test_tailored_needs_the_servers_aggregate():
    with pytest.raises(ValueError, match="tailored = True needs the server's aggregate"):
        A.min_max_adaptive(torch.zeros(1, 3), torch.ones(4, 3), generator=gen(), tailored=True)
    with pytest.raises(ValueError, match="needs the server's aggregate"):
        A.server_attack({"attack.name": "opt_alie", "attack.evals": 5}, gen())


def ref_arc(x: torch.Tensor, f: int) -> torch.Tensor:
    """ARC as the paper states it, one row at a time."""
    n = x.shape[0]
    k = math.floor(2 * (f / n) * (n - f))
    norms = [float(torch.linalg.vector_norm(r)) for r in x]
    order = sorted(range(n), key=lambda i: (-norms[i], i))
    if k == 0:
        return x.clone()
    c = norms[order[k]]
    out = x.clone()
    for i in order[:k]:
        if norms[i] > c:
            out[i] = x[i] * (c / norms[i])
    return out


@pytest.mark.parametrize("n, f", [(20, 9), (10, 4), (7, 1), (5, 0), (11, 5), (3, 1)])
def test_arc_matches_the_plain_loop(n, f):
    x = torch.randn(n, 6, generator=gen(n + f), dtype=torch.float64) * torch.logspace(0, 3, n, dtype=torch.float64)[:, None]
    rows, mix = arc(x, f=f)
    torch.testing.assert_close(rows, ref_arc(x, f))
    torch.testing.assert_close(mix, torch.eye(n, dtype=torch.float64))
    assert arc_count(n, f) == math.floor(2 * f * (n - f) / n)
    norms = torch.linalg.vector_norm(rows, dim=1)
    k = arc_count(n, f)
    if k:
        assert (norms <= torch.sort(torch.linalg.vector_norm(x, dim=1), descending=True).values[k] + 1e-9).all()


@pytest.mark.usefixtures("numpy_path")
def test_arc_over_several_column_blocks_rounds_each_clipped_value_once():
    """Across several column blocks (and a last partial one), in float32: every clipped value is the row's
    value times the scale in float64, rounded once to float32; the other rows are copied bit for bit."""
    from brmtrl.aggregators.gram import _chunk

    n, f = 20, 6
    d = 2 * _chunk(n) + 5
    x = torch.randn(n, d, generator=gen(3)) * torch.logspace(0, 2, n)[:, None]
    rows, _ = arc(x, f=f)
    norms = torch.linalg.vector_norm(x.double(), dim=1)
    k = arc_count(n, f)
    order = sorted(range(n), key=lambda i: (-float(norms[i]), i))
    c = norms[order[k]]
    want = x.clone()
    for i in order[:k]:
        want[i] = (x[i].double() * (c / norms[i])).float()
    assert rows.dtype == torch.float32 and torch.equal(rows, want)


def test_arc_before_any_rule_bounds_a_huge_row_and_keeps_trust_per_client():
    honest = honest_rows(h=9, d=4)
    x = torch.cat([honest, torch.full((1, 4), 1e9, dtype=torch.float64)])
    res = aggregate("mean", x, pre=["arc"], f=2)
    assert torch.linalg.vector_norm(res.point) < 10 * torch.linalg.vector_norm(honest, dim=1).max()
    assert res.trust.shape == (10,)
    assert PRE_STEPS["arc"].largest_f(10) == 4
    with pytest.raises(ValueError, match="arc: cannot tolerate f=5"):
        arc(x, f=5)
    torch.testing.assert_close(aggregate("geometric_median", x, pre=["arc"], f=0).point, geometric_median(x))
    torch.testing.assert_close(aggregate("mean", honest, pre=["arc"], f=0).point, mean(honest))


@pytest.mark.parametrize("attack", ["opt_alie", "opt_ipm", "min_max"])
def test_the_adversary_tunes_against_exactly_what_the_server_computes(attack, tiny_cfg):
    """The adversary's aggregate of the rows it sends is the server step's own aggregate (bucketing's draw
    included), so the attack's objective is the deviation the server really suffers."""
    from brmtrl.adversary import _server_aggregate, omniscient_adversary

    cfg = tiny_cfg(f"attack.name={attack}", "attack.tailored=true" if attack == "min_max" else "attack.evals=20",
                   "attack.byzantine_fraction=0.2", 'aggregator.pre=["bucketing", "nnm"]', "aggregator.f=1",
                   "aggregator.name=geometric_median")
    agg = Aggregation.from_config(cfg, 10, 20)
    ups = [torch.randn(30, generator=gen(s), dtype=torch.float64) for s in range(10)]
    step = omniscient_adversary(cfg, {2, 5}, size=30, aggregation=agg)
    sent = step(ups, list(range(10)), 4)
    assert torch.equal(sent[2], sent[5]) and not torch.equal(sent[2], ups[2])
    res = server_step(sent, list(range(10)), agg, size=30, round_=4, seed=cfg["seed"])
    torch.testing.assert_close(res.step, _server_aggregate(agg, cfg["seed"], 4)(torch.stack(sent)))
