"""Attacks (issue 8): each formula against a plain reference written here, the registry against the
config, every attack through the engine, and hostile inputs in the one server step."""

from __future__ import annotations

import logging
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from brmtrl import attacks as A
from brmtrl.aggregators import krum
from brmtrl.config import ATTACK_NAMES as CONFIG_ATTACKS, load_config
from brmtrl.engine import Simulation
from brmtrl.server import Aggregation, server_step


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def honest_rows(h: int = 8, d: int = 30, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    return torch.randn(h, d, generator=g, dtype=torch.float64) * 0.3 + torch.linspace(-1, 1, d, dtype=torch.float64)


BYZ = torch.zeros(2, 30, dtype=torch.float64)


def stats(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    a = x.numpy()
    return a.mean(axis=0), a.std(axis=0, ddof=1)


def test_registry_matches_the_config_and_every_attack_keeps_shape_and_dtype():
    assert set(A.ATTACKS) == set(CONFIG_ATTACKS)
    assert A.OMNISCIENT == {"alie", "ipm", "min_max", "min_sum", "mimic", "fang", "opt_alie", "opt_ipm"}
    assert A.ADAPTIVE == {"min_max", "min_sum", "opt_alie", "opt_ipm"}
    h = honest_rows()
    for name, attack in A.ATTACKS.items():
        for dtype in (torch.float32, torch.float64):
            byz = BYZ.to(dtype)
            extra = {"aggregate": lambda rows, h=h.to(dtype): torch.cat([rows, h]).mean(0)} if attack.adaptive else {}
            out = attack.fn(byz, h.to(dtype) if attack.omniscient else h[:0].to(dtype), generator=gen(), **extra)
            assert out.shape == byz.shape and out.dtype == dtype, name


def test_alie_z_max_known_answer_and_formula():
    # n = 10, b = 2: s = floor(6) - 2 = 4 supporters needed, z = Φ⁻¹(6/10)
    assert A.alie_z(10, 2) == pytest.approx(NormalDist().inv_cdf(0.6))
    assert A.alie_z(10, 2) == pytest.approx(0.2533471, abs=1e-6)
    h = honest_rows()
    mu, sd = stats(h)
    out = A.alie(BYZ, h, generator=gen()).numpy()
    z = A.alie_z(10, 2)
    np.testing.assert_allclose(out, np.tile(mu - z * sd, (2, 1)), rtol=1e-12, atol=1e-12)
    out = A.alie(BYZ, h, generator=gen(), z=1.5).numpy()
    np.testing.assert_allclose(out[1], mu - 1.5 * sd, rtol=1e-12, atol=1e-12)


def test_alie_rejects_a_non_positive_z_goes_up_on_request_and_warns_when_it_is_a_no_op():
    h = honest_rows()
    mu, sd = stats(h)
    for z in (0.0, -1.0):
        with pytest.raises(ValueError, match="z must be > 0"):
            A.alie(BYZ, h, generator=gen(), z=z)
    up = A.alie(BYZ, h, generator=gen(), z=1.5, direction="up").numpy()
    np.testing.assert_allclose(up[0], mu + 1.5 * sd, rtol=1e-12, atol=1e-12)
    # n = 9 honest + 1 Byzantine = 10 (even), b = 1: s = 6 - 1 = 5, z_max = Φ⁻¹(5/10) = 0, it sends μ
    assert A.alie_z(10, 1) == pytest.approx(0.0, abs=1e-12)
    h9 = honest_rows(h=9)
    with pytest.warns(RuntimeWarning, match="no-op"):
        out = A.alie(BYZ[:1], h9, generator=gen())
    np.testing.assert_allclose(out[0].numpy(), stats(h9)[0], rtol=1e-12, atol=1e-12)
    cfg = load_config(None, ["attack.name=alie"])
    assert cfg["attack.z"] == "auto" and A.attack_kwargs(cfg)["z"] is None
    with pytest.raises(Exception, match="attack.z"):
        load_config(None, ["attack.name=alie", "attack.z=0"])


def test_gaussian_sends_pure_noise_independent_of_the_update():
    """Li et al. (2019) / ByzFL: a Gaussian Byzantine worker sends N(0, σ² I), whatever it computed."""
    d = 20000
    u, v = torch.full((1, d), 7.0, dtype=torch.float64), torch.full((1, d), -3.0, dtype=torch.float64)
    a = A.gaussian(u, u[:0], generator=gen(5), sigma=2.0)
    b = A.gaussian(v, v[:0], generator=gen(5), sigma=2.0)
    assert torch.equal(a, b)                                   # the update plays no part
    assert abs(float(a.mean())) < 0.05 and abs(float(a.std()) - 2.0) < 0.05
    added = A.gaussian_additive(u, u[:0], generator=gen(5), sigma=2.0)   # the former gaussian, renamed
    torch.testing.assert_close(added, u + a)


def test_ipm_sends_minus_epsilon_times_the_honest_mean():
    h = honest_rows()
    mu, _ = stats(h)
    for eps in (0.1, 100.0):
        out = A.ipm(BYZ, h, generator=gen(), epsilon=eps).numpy()
        np.testing.assert_allclose(out, np.tile(-eps * mu, (2, 1)), rtol=1e-12)
        assert float(out[0] @ mu) < 0


def _gamma_by_bisection(ok, hi: float = 1e3, iters: int = 200) -> float:
    lo = 0.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@pytest.mark.parametrize("kind", ["std", "sign", "unit"])
def test_min_max_takes_the_largest_gamma_that_keeps_within_the_honest_spread(kind):
    h = honest_rows()
    a = h.numpy()
    mu, sd = stats(h)
    p = {"std": -sd, "sign": -np.sign(mu), "unit": -mu / np.linalg.norm(mu)}[kind]
    spread = max(np.sum((a[i] - a[j]) ** 2) for i in range(len(a)) for j in range(len(a)))
    gamma = _gamma_by_bisection(lambda g: max(np.sum((mu + g * p - r) ** 2) for r in a) <= spread)
    out = A.min_max(BYZ, h, generator=gen(), perturbation=kind).numpy()
    np.testing.assert_allclose(out[0], mu + gamma * p, rtol=1e-9, atol=1e-9)
    assert max(np.sum((out[0] - r) ** 2) for r in a) == pytest.approx(spread, rel=1e-9)


def test_min_sum_takes_the_largest_gamma_that_keeps_the_sum_of_distances():
    h = honest_rows()
    a = h.numpy()
    mu, sd = stats(h)
    bound = max(sum(np.sum((a[i] - a[j]) ** 2) for j in range(len(a))) for i in range(len(a)))
    gamma = _gamma_by_bisection(lambda g: sum(np.sum((mu - g * sd - r) ** 2) for r in a) <= bound)
    out = A.min_sum(BYZ, h, generator=gen()).numpy()
    np.testing.assert_allclose(out[1], mu - gamma * sd, rtol=1e-9, atol=1e-9)
    assert gamma > 0


def _authors_min_sum_gamma(ok, start: float = 50.0, threshold: float = 1e-5) -> float:
    """Shejwalkar & Houmansadr's released search for min-sum's γ, as a loop: start at γ = 50, move by
    half the last step up on success and down on failure, stop when the step is below the threshold."""
    lam, step, succ = start, start, 0.0
    while abs(succ - lam) > threshold:
        if ok(lam):
            succ = lam
            lam += step / 2
        else:
            lam -= step / 2
        step /= 2
    return succ


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_min_sum_authors_form_bounds_by_the_smallest_sum_and_caps_gamma(scale):
    h = honest_rows() * scale
    a = h.numpy()
    mu, sd = stats(h)
    p = -mu / np.linalg.norm(mu)
    sums = [sum(np.sum((a[i] - a[j]) ** 2) for j in range(len(a))) for i in range(len(a))]
    gamma = _authors_min_sum_gamma(lambda g: sum(np.sum((mu + g * p - r) ** 2) for r in a) <= min(sums))
    out = A.min_sum(BYZ, h, generator=gen(), perturbation="unit", bound="min").numpy()
    got = float((out[0] - mu) @ p)
    assert got == pytest.approx(gamma, abs=1e-4)
    np.testing.assert_allclose(out[0], mu + got * p, rtol=1e-9, atol=1e-9 * scale)
    paper = A.min_sum(BYZ, h, generator=gen(), perturbation="unit").numpy()
    assert float((paper[0] - mu) @ p) > got                      # the paper's max bound lets γ grow further
    if scale > 1:
        assert got == pytest.approx(100.0, abs=1e-4)             # the authors' search never exceeds 100
    cfg = load_config(None, ["attack.name=min_sum", "attack.sum_bound=min"])
    assert A.attack_kwargs(cfg) == {"perturbation": "std", "bound": "min", "tailored": False, "evals": 20}


def test_mimic_copies_the_honest_row_farthest_along_the_top_principal_direction():
    h = honest_rows(seed=4)
    a = h.numpy()
    c = a - a.mean(axis=0)
    z = np.linalg.svd(c, full_matrices=False)[2][0]
    best = int(np.argmax(np.abs(c @ z)))
    out = A.mimic(BYZ, h, generator=gen()).numpy()
    np.testing.assert_array_equal(out, np.tile(a[best], (2, 1)))


def test_fang_trimmed_mean_goes_beyond_the_honest_extreme_against_the_honest_direction():
    h = honest_rows()
    a = h.numpy()
    mu = a.mean(axis=0)
    lo, hi = a.min(axis=0), a.max(axis=0)
    out = A.fang(BYZ, h, generator=gen(), target="trimmed_mean").numpy()
    for j in range(a.shape[1]):
        if mu[j] > 0:
            low, high = (lo[j] / 2, lo[j]) if lo[j] > 0 else (2 * lo[j], lo[j])
        else:
            low, high = (hi[j], 2 * hi[j]) if hi[j] > 0 else (hi[j], hi[j] / 2)
        assert np.all((out[:, j] >= low - 1e-12) & (out[:, j] <= high + 1e-12)), j
    assert not np.array_equal(out[0], out[1])  # drawn per client


def test_fang_krum_is_selected_by_krum_with_the_largest_halving_lambda():
    # honest updates as SGD makes them: noise larger than their common drift
    h = torch.randn(10, 30, generator=gen(2), dtype=torch.float64) + 0.2
    byz = torch.zeros(3, 30, dtype=torch.float64)
    out = A.fang(byz, h, generator=gen(), target="krum")
    assert torch.equal(out[0], out[2])
    s = torch.sign(h.mean(dim=0))
    lam = float(out[0] @ -s) / float(s @ s)
    assert lam > 1e-5
    x = torch.cat([out, h])
    assert torch.equal(krum(x, f=3), out[0])  # Krum picks the crafted point
    # twice that λ is not picked (the search halves from the upper bound)
    doubled = torch.cat([(-2 * lam * s).expand(3, -1), h])
    assert not torch.equal(krum(doubled, f=3), doubled[0])


def test_fang_target_auto_follows_the_aggregator():
    assert A.fang_target({"attack.fang_target": "auto", "aggregator.name": "krum"}) == "krum"
    assert A.fang_target({"attack.fang_target": "auto", "aggregator.name": "bulyan"}) == "krum"
    assert A.fang_target({"attack.fang_target": "auto", "aggregator.name": "median"}) == "trimmed_mean"
    assert A.fang_target({"attack.fang_target": "krum", "aggregator.name": "median"}) == "krum"


def test_omniscient_attacks_without_honest_rows_send_what_they_computed():
    for name in A.OMNISCIENT:
        extra = {"aggregate": lambda rows: rows.mean(0)} if A.ATTACKS[name].adaptive else {}
        out = A.ATTACKS[name].fn(BYZ + 1, BYZ[:0], generator=gen(), **extra)
        assert torch.equal(out, BYZ + 1), name


def test_the_server_attack_replaces_only_the_byzantine_rows():
    cfg = load_config(None, ["attack.name=ipm", "attack.byzantine_fraction=0.2"])
    attack = A.server_attack(cfg, gen())
    x = honest_rows(h=6)
    mask = torch.tensor([True, False, False, True, False, False])
    out = attack(x, mask)
    assert torch.equal(out[~mask], x[~mask])
    assert torch.allclose(out[mask], (-0.1 * x[~mask].mean(dim=0)).expand(2, -1))
    assert A.server_attack(load_config(None, ["attack.name=sign_flip", "attack.byzantine_fraction=0.2"]), gen()) is None


# --------------------------------------------------------------------------- through the engine
def test_the_aggregator_f_stays_apart_from_the_true_byzantine_count(tiny_cfg):
    sim = Simulation(tiny_cfg("attack.name=alie", "attack.byzantine_fraction=0.3", "aggregator.name=krum",
                              "aggregator.f=1", "train.rounds=2"))
    res = sim.run()
    assert len(res["final"]["byzantine_clients"]) == 6
    assert all(h["f_assumed"] == 1 for h in res["history"])


@pytest.mark.parametrize("name", sorted(set(CONFIG_ATTACKS) - {"none"}))
def test_every_attack_runs_against_a_robust_rule_from_the_config(tiny_cfg, name):
    res = Simulation(tiny_cfg(f"attack.name={name}", "attack.byzantine_fraction=0.2", "aggregator.name=median",
                              "train.rounds=3")).run()
    assert math.isfinite(res["final"]["honest_acc_mean"])
    byz = set(res["final"]["byzantine_clients"])
    if name in ("nan", "inf"):  # every Byzantine update is rejected, nothing else
        assert res["rejected_updates"] and {e["client"] for e in res["rejected_updates"]} <= byz
        assert all("non-finite" in e["reason"] for e in res["rejected_updates"])
        assert res["final"]["updates_rejected"] == len(res["rejected_updates"])
    else:
        assert not res["rejected_updates"]


def test_an_omniscient_attack_moves_the_mean(tiny_cfg):
    clean = Simulation(tiny_cfg("aggregator.name=mean", "train.rounds=3"))
    clean.run()
    attacked = Simulation(tiny_cfg("aggregator.name=mean", "attack.name=ipm", "attack.epsilon=100",
                                   "attack.byzantine_fraction=0.3", "train.rounds=3"))
    attacked.run()
    assert not torch.allclose(clean.shared, attacked.shared)


# --------------------------------------------------------------------------- hostile inputs, one per case
SIZE = 12
AGG = Aggregation("geometric_median", max_norm_ratio=1e6)


def hostile_round(bad, caplog):
    good = [torch.randn(SIZE, generator=gen(s)) * 0.1 for s in range(5)]
    with caplog.at_level(logging.WARNING, logger="brmtrl"):
        res = server_step([*good, bad], [0, 1, 2, 3, 4, "evil"], AGG, size=SIZE)
    assert res.step is not None and torch.isfinite(res.step).all()
    assert res.accepted == [0, 1, 2, 3, 4]
    assert [e["client"] for e in res.rejected] == ["evil"]
    assert "client evil" in caplog.text
    return res.rejected[0]["reason"]


@pytest.mark.parametrize("bad, needle", [
    (torch.full((SIZE,), float("nan")), "non-finite"),
    (torch.full((SIZE,), float("inf")), "non-finite"),
    (torch.full((SIZE,), -float("inf")), "non-finite"),
    (torch.zeros(SIZE + 1), "shape"),
    (torch.zeros(3, 4), "shape"),
    (torch.zeros(SIZE, dtype=torch.int32), "dtype"),
    (torch.zeros(SIZE, dtype=torch.bool), "dtype"),
    (np.zeros(SIZE), "not a tensor"),
    (None, "not a tensor"),
    (torch.full((SIZE,), 1e300, dtype=torch.float64), "overflows"),
    (torch.full((SIZE,), 1e9), "max_norm_ratio"),
])
def test_a_hostile_update_is_rejected_named_and_the_round_goes_on(bad, needle, caplog):
    assert needle in hostile_round(bad, caplog)


def test_an_update_within_the_norm_ratio_is_kept():
    good = [torch.randn(SIZE, generator=gen(s)) * 0.1 for s in range(5)]
    res = server_step([*good, good[0] * 1000], list(range(6)), AGG, size=SIZE)
    assert len(res.accepted) == 6 and not res.rejected


def test_what_an_omniscient_adversary_crafts_is_screened(caplog, tiny_cfg):
    """The simulated adversary's step runs before the server step, which screens what it crafted as if
    it had been sent."""
    from brmtrl.adversary import omniscient_adversary

    good = [torch.randn(SIZE, generator=gen(s)) * 0.1 for s in range(5)]
    cfg = tiny_cfg("attack.name=ipm", "attack.epsilon=1e300", "attack.byzantine_fraction=0.2")
    crafted = omniscient_adversary(cfg, {0}, size=SIZE)(good, list(range(5)), 1)
    with caplog.at_level(logging.WARNING, logger="brmtrl"):
        res = server_step(crafted, list(range(5)), AGG, size=SIZE)
    assert res.accepted == [1, 2, 3, 4] and res.rejected[0]["client"] == 0
    assert res.step is not None and torch.isfinite(res.step).all()
