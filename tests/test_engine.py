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
        res = Simulation(quick(f"aggregator.name={name}", "train.rounds=40")).run()
        accs[name] = res["final"]["honest_acc_mean"]
        assert len(res["final"]["byzantine_clients"]) == 10  # 20 % of 50
    assert accs["geometric_median"] > accs["mean"] + 0.15, accs


def test_metrics_cover_honest_clients_only(tiny_cfg):
    sim = Simulation(tiny_cfg("attack.name=label_flip", "attack.byzantine_fraction=0.25"))
    assert len(sim.byzantine) == 5
    assert set(sim.honest).isdisjoint(sim.byzantine) and len(sim.honest) == 15
    res = sim.run()
    assert res["final"]["byzantine_clients"] == sim.byzantine
    assert 0.0 <= res["final"]["honest_acc_min"] <= res["final"]["honest_acc_mean"] <= 1.0


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
@pytest.mark.parametrize("agg", ["krum", "multi_krum", "median", "trimmed_mean"])
def test_attack_and_aggregator_grid_runs(tiny_cfg, attack, agg):
    res = Simulation(tiny_cfg(f"attack.name={attack}", "attack.byzantine_fraction=0.2",
                              f"aggregator.name={agg}", "train.rounds=2")).run()
    assert res["final"]["honest_acc_mean"] is not None


def test_linear_mtrl_recovers_the_subspace():
    cfg = load_config(None, ["dataset.name=synthetic_linear", "dataset.num_clients=40", "dataset.dim=20",
                             "dataset.rank=2", "dataset.samples_per_client=50", "train.rounds=40",
                             "train.participation=0.5", "train.head_epochs=5", "train.lr=0.05",
                             "aggregator.name=geometric_median", "device=cpu", "train.eval_every=40"])
    res = Simulation(cfg).run()
    assert res["final"]["subspace_distance"] < 0.3
    assert res["final"]["honest_acc_mean"] is None and res["final"]["honest_loss_mean"] < 1.0


def test_bad_updates_are_rejected_logged_and_the_run_goes_on(tiny_cfg, caplog):
    class Faulty(Simulation):
        def local_update(self, client, r, **kwargs):
            delta = super().local_update(client, r, **kwargs)
            return delta * float("nan") if client == self.sample_clients(r)[0] else delta

    with caplog.at_level(logging.WARNING, logger="brmtrl"):
        res = Faulty(tiny_cfg("aggregator.name=geometric_median")).run()
    assert len(res["rejected_updates"]) == 4  # one per round
    assert "rejected the update of client" in caplog.text
    assert np.isfinite(res["final"]["honest_acc_mean"])


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
