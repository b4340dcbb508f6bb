"""A fair comparison (issue 19): one local budget for every method, FedRep's final round before scoring
under ``eval.protocol = 'fedrep'`` (never-sampled clients included), and gaps to a reference taken on the
same clients."""

from __future__ import annotations

import pytest
import torch

from brmtrl.engine import Simulation
from brmtrl.evaluation import final_round, mean_over
from brmtrl.local_rules import local_epochs, resolve_local_rule
from brmtrl.local_update import evaluate, train_phases
from brmtrl.generators import client_generator
from brmtrl.split import set_flat


def test_a_method_that_trains_its_whole_model_gets_brmtrls_budget(tiny_cfg):
    cfg = tiny_cfg("train.head_epochs=4", "train.rep_epochs=2")
    assert cfg["train.local_epochs"] == "auto" and local_epochs(cfg) == 6
    for name in ("fedavg", "fedavg_ft", "fedper", "lg_fedavg", "local"):
        assert sum(e for _, e in resolve_local_rule(name).phases(cfg)) == 6
    assert sum(e for _, e in resolve_local_rule("brmtrl").phases(cfg)) == 6
    assert local_epochs(tiny_cfg("train.local_epochs=3")) == 3


def test_fedreps_final_round_trains_each_methods_local_part(tiny_cfg):
    cfg = tiny_cfg("eval.protocol=fedrep", "train.head_epochs=12", "train.rep_epochs=1")
    parts = {n: final_round(cfg, resolve_local_rule(n)) for n in
             ("brmtrl", "fedrep", "fedper", "lg_fedavg", "local", "fedavg", "fedavg_ft")}
    assert parts == {"brmtrl": ("head", 12), "fedrep": ("head", 12), "fedper": ("head", 12),
                     "lg_fedavg": ("bottom", 12), "local": ("all", 12), "fedavg": ("head", 10), "fedavg_ft": None}
    assert final_round(tiny_cfg("train.head_epochs=2"), resolve_local_rule("local")) is None   # protocol 'brmtrl'
    assert final_round(tiny_cfg("eval.protocol=fedrep", "train.head_epochs=2"), resolve_local_rule("local")) == ("all", 10)


@pytest.mark.parametrize("algorithm", ["local", "lg_fedavg", "fedavg"])
def test_every_client_is_scored_after_fedreps_final_round_never_sampled_ones_included(tiny_cfg, algorithm):
    """A known answer: each client's score is that of its own model after the final round, computed here
    by hand; with participation 0.1 and 2 rounds most clients were never sampled."""
    extra = ("model.name=mlp", "algorithm.lg_shared_layers=1") if algorithm == "lg_fedavg" else ()
    cfg = tiny_cfg("eval.protocol=fedrep", f"algorithm.name={algorithm}", "train.participation=0.1",
                   "train.rounds=2", "train.eval_every=1", *extra)
    sim = Simulation(cfg)
    res = sim.run()
    scores = res["final"]["client_scores"]
    assert scores["clients"] == sim.honest
    part, epochs = final_round(cfg, sim.rule)
    for c in (scores["clients"][0], scores["clients"][-1]):
        set_flat(sim.model, sim.rule.shared, sim.shared)
        if sim.rule.private != "none":
            set_flat(sim.model, sim.rule.private, sim.private[c])
        train_phases(sim.model, *sim.client_data(c), [(part, epochs)], sim.sgd,
                     client_generator(cfg["seed"], 2, c, stream=4), sim.augment)
        sim.model.eval()
        with torch.no_grad():
            acc, _ = evaluate(sim.model, *sim.data.client_test(c))
        assert scores["accuracy"][scores["clients"].index(c)] == pytest.approx(acc, abs=1e-6)
    # before the last round, the clients are scored with what they hold (round 1: local clients at their init)
    plain = Simulation(cfg.replace(eval__protocol="brmtrl")).run()
    assert res["history"][0]["honest_acc_mean"] != res["history"][-1]["honest_acc_mean"]
    assert res["final"]["honest_acc_mean"] != plain["final"]["honest_acc_mean"]


def test_a_reference_is_scored_on_the_attacked_runs_honest_clients(tiny_cfg):
    clean = Simulation(tiny_cfg()).run()
    attacked_cfg = tiny_cfg("attack.name=sign_flip", "attack.byzantine_fraction=0.2")
    attacked = Simulation(attacked_cfg).run()
    byz = set(attacked["final"]["byzantine_clients"])
    assert byz and set(clean["final"]["client_scores"]["clients"]) >= byz
    honest = [c for c in clean["final"]["client_scores"]["clients"] if c not in byz]
    assert attacked["final"]["client_scores"]["clients"] == honest
    s = clean["final"]["client_scores"]
    by_hand = sum(a for c, a in zip(s["clients"], s["accuracy"]) if c not in byz) / len(honest)
    assert mean_over(s, honest) == pytest.approx(by_hand)
    assert mean_over(s, s["clients"]) == pytest.approx(clean["final"]["honest_acc_mean"])
    weighted = mean_over(s, honest, weighted=True)
    n = {c: k for c, k in zip(s["clients"], s["test_samples"])}
    assert weighted == pytest.approx(sum(a * n[c] for c, a in zip(s["clients"], s["accuracy"]) if c not in byz)
                                      / sum(n[c] for c in honest))
    assert mean_over(s, []) is None
