from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from brmtrl.config import load_config
from brmtrl.engine import Simulation

from .conftest import CIFAR, CONFIGS, FEMNIST, need


def quick(*overrides):
    return load_config(CONFIGS / "quick.toml", ["device=cpu", *overrides])


def test_geometric_median_beats_mean_under_sign_flip():
    accs = {}
    for name in ("mean", "geometric_median"):
        res = Simulation(quick(f"aggregator.name={name}", "aggregator.pre=[]", "train.rounds=40")).run()
        accs[name] = res["final"]["honest_acc_mean"]
        assert len(res["final"]["byzantine_clients"]) == 10  # 20 % of 50
    assert accs["geometric_median"] > accs["mean"] + 0.15, accs
    # the shipped default is the geometric median alone (docs/robustness.md: the best worst case)
    shipped = quick("train.rounds=40")
    assert shipped["aggregator.pre"] == [] and shipped["aggregator.name"] == "geometric_median"


def test_metrics_cover_honest_clients_only(tiny_cfg):
    sim = Simulation(tiny_cfg("attack.name=label_flip", "attack.byzantine_fraction=0.25"))
    assert len(sim.byzantine) == 5
    assert set(sim.honest).isdisjoint(sim.byzantine) and len(sim.honest) == 15
    res = sim.run()
    assert res["final"]["byzantine_clients"] == sim.byzantine
    before = sim.evaluate(99)
    assert before["clients_scored"] == 15
    # wrecking every Byzantine client's head changes nothing: they are not scored
    sim.private[sim.byzantine] = 1e3 * torch.randn(len(sim.byzantine), sim.private.shape[1])
    assert sim.evaluate(99) == before
    # wrecking one honest client's head does
    sim.private[sim.honest[0]] = 1e3 * torch.randn(sim.private.shape[1])
    assert sim.evaluate(99)["honest_acc_mean"] != before["honest_acc_mean"]


@pytest.mark.parametrize("algo", ["brmtrl", "fedavg", "fedper", "lg_fedavg", "local"])
def test_every_rule_learns(tiny_cfg, algo):
    res = Simulation(tiny_cfg(f"algorithm.name={algo}", "aggregator.name=mean", "train.rounds=12",
                              "train.local_epochs=3", "train.head_epochs=3")).run()
    first, last = res["history"][0], res["history"][-1]
    if algo == "fedavg":  # one global model cannot fit clients whose labels follow their own heads
        assert np.isfinite(last["honest_loss_mean"])
    else:
        assert last["honest_loss_mean"] < first["honest_loss_mean"]
        assert last["honest_acc_mean"] > 0.35  # 4 classes: chance is 0.25


@pytest.mark.parametrize("attack", ["gaussian", "random", "sign_flip", "label_flip"])
@pytest.mark.parametrize("agg", ["krum", "multi_krum", "median", "trimmed_mean", "geometric_median"])
def test_attack_and_aggregator_grid_runs(tiny_cfg, attack, agg):
    cfg = tiny_cfg(f"attack.name={attack}", "attack.byzantine_fraction=0.2", f"aggregator.name={agg}",
                   "train.rounds=8", "attack.magnitude=1e12", "attack.sigma=100",
                   "aggregator.max_norm_ratio=0")  # the rule itself must hold: no norm screening
    res = Simulation(cfg).run()
    hist = res["history"]
    assert [h["round"] for h in hist] == list(range(1, 9))
    assert all(h["aggregator"] == agg and h["updates_accepted"] == 10 for h in hist)  # 50 % of 20 sampled
    assert all(h["byzantine_accepted"] <= res["final"]["aggregator_f"] for h in hist if "f_used" in h)
    assert sum(h["byzantine_sampled"] for h in hist) > 0  # the attack took part
    # the robust rule keeps the honest clients near the attack-free run (accuracy 0.39, loss 1.315 after
    # 8 rounds with any rule): above chance (0.25), loss never diverging
    assert res["final"]["honest_acc_mean"] > 0.3, res["final"]
    assert all(h["honest_loss_mean"] < 2.0 for h in hist), [h["honest_loss_mean"] for h in hist]


def test_mean_is_steered_where_robust_rules_hold(tiny_cfg):
    def loss(agg: str, *extra: str) -> float:
        return Simulation(tiny_cfg("attack.name=random", "attack.byzantine_fraction=0.2", "attack.magnitude=1e12",
                                   f"aggregator.name={agg}", "train.rounds=8", *extra)).run()["final"]["honest_loss_mean"]

    unscreened = {agg: loss(agg, "aggregator.max_norm_ratio=0") for agg in ("mean", "geometric_median")}
    assert unscreened["geometric_median"] < 2.0 and unscreened["mean"] > 100.0, unscreened
    # by default absurd norms (over 1e6 x the round's median) are rejected before any rule sees them
    assert loss("mean") < 2.0


def test_linear_mtrl_recovers_the_subspace():
    cfg = load_config(None, ["dataset.name=synthetic_linear", "dataset.num_clients=40", "dataset.dim=20",
                             "dataset.rank=2", "dataset.samples_per_client=50", "train.rounds=40",
                             "train.participation=0.5", "train.head_epochs=5", "train.lr=0.05",
                             "aggregator.name=geometric_median", "device=cpu", "train.eval_every=40"])
    res = Simulation(cfg).run()
    assert res["final"]["subspace_distance"] < 0.3
    assert res["final"]["honest_acc_mean"] is None and res["final"]["honest_loss_mean"] < 1.0


BAD = [lambda d: d * float("nan"), lambda d: d[:-1], lambda d: d.to(torch.int64), lambda d: d.tolist(),
       lambda d: torch.full((d.numel(),), 1e300, dtype=torch.float64)]


def test_bad_updates_are_rejected_logged_and_the_run_goes_on(tiny_cfg, caplog):
    class Faulty(Simulation):
        def attack(self, delta, client, r):
            return BAD[r - 1](delta) if client == self.sample_clients(r)[0] else delta

    with caplog.at_level(logging.WARNING, logger="brmtrl"):
        res = Faulty(tiny_cfg("aggregator.name=geometric_median", "train.rounds=5")).run()
    reasons = [e["reason"] for e in res["rejected_updates"]]
    assert len(reasons) == 5  # one per round, each named
    assert "non-finite" in reasons[0] and "shape" in reasons[1] and "dtype" in reasons[2]
    assert "not a tensor" in reasons[3] and "overflows" in reasons[4]
    assert all(h["updates_accepted"] == 9 and h["rejected"] == 1 for h in res["history"])
    assert "rejected the update of client" in caplog.text
    assert np.isfinite(res["final"]["honest_acc_mean"])


def test_every_training_client_byzantine_is_a_one_line_error(tiny_cfg, tmp_path, capsys):
    from brmtrl.cli import main
    from brmtrl.config import ConfigError

    with pytest.raises(ConfigError, match="no honest client"):
        Simulation(tiny_cfg("attack.name=sign_flip", "attack.byzantine_fraction=0.98"))  # round(19.6) = 20
    code = main(["run", "--config", str(CONFIGS / "quick.toml"), "--set", "attack.byzantine_fraction=0.995",
                 "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "attack.byzantine_fraction" in err


def test_clients_without_test_samples_are_not_scored(tiny_cfg):
    from brmtrl.data import load_data

    cfg = tiny_cfg("train.rounds=2")
    data = load_data(cfg)
    empty = [2, 5]  # as a Dirichlet partition with a small alpha can leave them
    for c in empty:
        data.test_idx[c] = data.test_idx[c][:0]
    sim = Simulation(cfg, data=data)
    res = sim.run()
    assert np.isfinite(res["final"]["honest_acc_mean"])
    assert res["history"][-1]["clients_scored"] == len(sim.honest) - len(empty)


def test_clients_without_training_data_send_nothing(tiny_cfg):
    from brmtrl.data import load_data

    cfg = tiny_cfg("train.participation=1.0", "train.rounds=1", "aggregator.name=mean")
    data = load_data(cfg)
    data.train_idx[3] = data.train_idx[3][:0]
    sim = Simulation(cfg, data=data)
    head3 = sim.private[3].clone()
    res = sim.run()
    h = res["history"][0]
    assert h["no_update"] == 1 and h["updates_received"] == 19 and h["updates_accepted"] == 19
    assert torch.equal(sim.private[3], head3)


def test_auto_f_records_true_and_assumed_byzantine_counts(tiny_cfg, caplog):
    cfg = tiny_cfg("attack.name=sign_flip", "attack.byzantine_fraction=0.2", "aggregator.name=krum",
                   "train.participation=0.5", "train.rounds=12", "aggregator.f=1")
    with caplog.at_level(logging.WARNING, logger="brmtrl"):
        sim = Simulation(cfg)
        res = sim.run()
    assert sim.f == 1
    hist = res["history"]
    assert all(h["f_assumed"] == 1 for h in hist)
    exceeded = [h["round"] for h in hist if h["byzantine_accepted"] > h["f_assumed"]]
    assert exceeded and res["final"]["rounds_byzantine_exceeded_f"] == exceeded
    assert "more than aggregator.f = 1 assumes" in caplog.text


def hypergeom_ppf(q: float, pool: int, marked: int, draws: int) -> int:
    """The hypergeometric quantile by its definition, in exact rational arithmetic: the smallest k with
    P(X <= k) >= q, P(X = j) = C(marked, j) C(pool - marked, draws - j) / C(pool, draws)."""
    from fractions import Fraction
    from math import comb

    cdf, target = Fraction(0), Fraction(q)
    for k in range(min(marked, draws) + 1):
        cdf += Fraction(comb(marked, k) * comb(pool - marked, draws - k), comb(pool, draws))
        if cdf >= target:
            return k
    raise AssertionError("the CDF reaches 1")


def test_the_exact_hypergeometric_quantile_on_a_hand_worked_case():
    # 2 marked of 4, 2 drawn: P(X = 0) = 1/6, P(X <= 1) = 5/6, P(X <= 2) = 1
    assert [hypergeom_ppf(q, 4, 2, 2) for q in (0.1, 1 / 6, 0.5, 5 / 6 - 1e-9, 0.9)] == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("q", [0.95, 0.999, 0.9999])
def test_auto_f_is_the_configured_quantile_of_the_byzantine_count(tiny_cfg, q):
    from brmtrl.server import hypergeometric_quantile

    for pool, marked, draws in [(20, 4, 10), (50, 10, 20), (100, 20, 10), (90, 18, 9)]:
        assert hypergeometric_quantile(q, pool, marked, draws) == hypergeom_ppf(q, pool, marked, draws)
    sim = Simulation(tiny_cfg("attack.name=sign_flip", "attack.byzantine_fraction=0.2", "aggregator.name=trimmed_mean",
                              "train.participation=0.5", f"aggregator.f_quantile={q}"))
    assert sim.f == min(hypergeom_ppf(q, 20, 4, 10), 4)  # trimmed_mean tolerates 4 of 10


def test_auto_f_defaults_to_the_99_99th_percentile(tiny_cfg):
    cfg = tiny_cfg("attack.name=sign_flip", "attack.byzantine_fraction=0.2", "aggregator.name=median",
                   "aggregator.pre=[\"nnm\"]", "dataset.num_clients=50", "train.participation=0.4")
    assert cfg["aggregator.f_quantile"] == 0.9999
    assert Simulation(cfg).f == hypergeom_ppf(0.9999, 50, 10, 20) == 9


def test_auto_f_lowered_to_what_the_rule_tolerates_warns(tiny_cfg, caplog):
    cfg = tiny_cfg("attack.name=sign_flip", "attack.byzantine_fraction=0.45", "aggregator.name=krum",
                   "train.participation=0.5", "train.rounds=1")
    with caplog.at_level(logging.WARNING, logger="brmtrl"):
        sim = Simulation(cfg)
    assert sim.f == 3  # auto gives 6 of the 9 Byzantine, krum tolerates 3 among 10 (n >= 2f + 3)
    assert "it assumes f=3" in caplog.text


def test_fedrep_means_the_mean_unless_set(tiny_cfg):
    assert tiny_cfg("algorithm.name=fedrep")["aggregator.name"] == "mean"
    assert tiny_cfg("algorithm.name=brmtrl")["aggregator.name"] == "geometric_median"
    assert tiny_cfg("algorithm.name=fedavg")["aggregator.name"] == "mean"
    assert tiny_cfg("algorithm.name=fedrep", "aggregator.name=krum")["aggregator.name"] == "krum"


def test_fedrep_protocol_weights_by_test_size_and_refits_heads(tiny_cfg):
    from brmtrl.client import EvalResult
    from brmtrl.evaluation import summarize

    res = [EvalResult(1.0, 0.1, 30), EvalResult(0.0, 2.0, 10), EvalResult(float("nan"), float("nan"), 0)]
    assert summarize(res)["honest_acc_mean"] == 0.5 and summarize(res)["clients_scored"] == 2
    assert summarize(res, weighted=True)["honest_acc_mean"] == 0.75
    cfg = tiny_cfg("dataset.partition=dirichlet", "dataset.dirichlet_alpha=0.3", "train.rounds=3")
    ours = Simulation(cfg)
    ours.run()
    theirs = Simulation(cfg.replace(eval__protocol="fedrep"))
    theirs.run()
    assert torch.equal(ours.shared, theirs.shared)  # the protocol changes the scoring, not the training
    heads = theirs.private.clone()
    a, b = ours.evaluate(3), theirs.evaluate(3)
    assert a["honest_acc_mean"] != b["honest_acc_mean"] and 0.0 <= b["honest_acc_mean"] <= 1.0
    assert torch.equal(theirs.private, heads)  # refitted heads score only; the clients keep their own
    # the refit itself matters: the same weighting with the clients' own heads scores differently
    from brmtrl.client import evaluate_client

    own = []
    for c in theirs.honest:
        idx = torch.as_tensor(theirs.data.test_idx[c], dtype=torch.long)
        own.append(evaluate_client(theirs.model, theirs.rule, theirs.shared, theirs.private[c],
                                   (theirs.data.test_x[idx], theirs.data.test_y[idx])))
    assert summarize(own, weighted=True)["honest_acc_mean"] != b["honest_acc_mean"]


def test_cifar10_paper_config_runs_one_round():
    need(CIFAR)
    cfg = load_config(CONFIGS / "cifar10.toml", [f"dataset.root={CIFAR}", "train.rounds=1",
                                                  "train.participation=0.03", "train.head_epochs=1", "device=cpu"])
    res = Simulation(cfg).run()
    assert 0.0 <= res["final"]["honest_acc_mean"] <= 1.0 and len(res["final"]["byzantine_clients"]) == 20


def test_femnist_config_runs_one_round():
    need(FEMNIST)
    cfg = load_config(CONFIGS / "femnist.toml", [f"dataset.root={FEMNIST}", "train.rounds=1",
                                                  "train.participation=0.05", "train.head_epochs=1", "device=cpu"])
    res = Simulation(cfg).run()
    assert res["data"]["num_clients"] == 105 and len(res["final"]["byzantine_client_names"]) == 21


def test_progress_bar_for_classification_and_regression(tiny_cfg, capsys):
    Simulation(tiny_cfg("train.rounds=2"), progress=True).run()
    Simulation(tiny_cfg("dataset.name=synthetic_linear", "train.rounds=2"), progress=True).run()
    err = capsys.readouterr().err
    assert "acc=" in err and "loss=" in err


def test_new_clients_transfer_with_the_learned_representation(tiny_cfg):
    cfg = ["transfer.clients=4", "transfer.samples=10", "transfer.epochs=20", "train.rounds=15",
           "train.eval_every=5", "dataset.samples_per_client=40"]
    sim = Simulation(tiny_cfg(*cfg))
    assert len(sim.holdout) == 4 and set(sim.holdout).isdisjoint(sim.honest)
    assert all(set(sim.sample_clients(r)).isdisjoint(sim.holdout) for r in range(1, 16))
    res = sim.run()
    first, last = res["history"][0]["transfer_acc_mean"], res["final"]["transfer_acc_mean"]
    assert res["final"]["transfer_clients"] == sim.holdout
    assert last > 0.4 and last > first  # 4 classes: chance is 0.25


def test_threads_setting(tiny_cfg):
    before = torch.get_num_threads()
    try:
        Simulation(tiny_cfg("threads=1", "train.rounds=1"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_resumed_run_keeps_the_rounds_above_f(tmp_path):
    """The rounds where more Byzantine updates were accepted than f are part of the checkpoint (they
    were lost on resume when they lived beside the record)."""
    from brmtrl.config import load_config

    from .conftest import CONFIGS

    base = ["device=cpu", "threads=1", "dataset.num_clients=10", "train.eval_every=2", "seed=2", "aggregator.f=0",
            "aggregator.pre=[\"nnm\"]",
            "train.checkpoint_every=2"]
    whole = Simulation(load_config(CONFIGS / "quick.toml", [*base, "train.rounds=4"])).run()
    first = Simulation(load_config(CONFIGS / "quick.toml", [*base, "train.rounds=2"]), out_dir=tmp_path)
    first.run()
    resumed = Simulation(load_config(CONFIGS / "quick.toml", [*base, "train.rounds=4"]), out_dir=tmp_path)
    resumed.restore(tmp_path)
    res = resumed.run()
    assert whole["final"]["rounds_byzantine_exceeded_f"] == [1, 2]
    assert res["final"]["rounds_byzantine_exceeded_f"] == whole["final"]["rounds_byzantine_exceeded_f"]
    assert res["history"] == [{**h, **{k: res["history"][i][k] for k in h if k.endswith("_s")}}
                              for i, h in enumerate(whole["history"])]
