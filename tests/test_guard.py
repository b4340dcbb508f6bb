"""The client-side guard (issue 18, brmtrl.guard): its validation part is training data, never test data;
its personal model is Ditto's; its state survives a checkpoint. Both engines agree: with the reputation, in
test_flower.py::test_flower_simulation_matches_the_built_in_engine (one Flower simulation for all)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from brmtrl.config import ConfigError
from brmtrl.engine import Simulation
from brmtrl.guard import Guard, validation_split
from brmtrl.local_update import SGDSettings, train_phases
from brmtrl.split import get_flat, set_flat

GUARD = ("guard.name=ditto", "attack.name=sign_flip", "attack.byzantine_fraction=0.2", "train.eval_every=2",
         "train.rounds=6")


def test_the_validation_part_is_a_fixed_disjoint_share_of_the_training_samples(tiny_cfg):
    cfg = tiny_cfg(*GUARD)
    x = torch.arange(30.0).reshape(30, 1)
    y = torch.arange(30)
    (tx, ty), (vx, vy) = validation_split(cfg, (x, y), 3)
    assert len(vy) == 6 and len(ty) == 24
    assert set(ty.tolist()).isdisjoint(vy.tolist()) and set(ty.tolist()) | set(vy.tolist()) == set(range(30))
    assert torch.equal(validation_split(cfg, (x, y), 3)[1][1], vy)            # the same every time
    assert not torch.equal(validation_split(cfg, (x, y), 4)[1][1], vy)        # another client, another part
    assert len(validation_split(cfg, (x[:2], y[:2]), 0)[1][1]) == 1           # at least one, never all
    assert len(validation_split(cfg, (x[:1], y[:1]), 0)[1][1]) == 0


def test_clients_train_only_on_their_training_part(tiny_cfg):
    sim = Simulation(tiny_cfg(*GUARD))
    c = sim.honest[0]
    train, val = validation_split(sim.cfg, sim.data.client_train(c), c)
    assert torch.equal(sim.client_data(c)[0], train[0]) and len(val[1]) > 0


def test_the_personal_model_is_dittos(tiny_cfg):
    """λ = 0: the personal φ is plain local training from the received φ; a huge λ keeps it at the received φ."""
    sim = Simulation(tiny_cfg(*GUARD))
    c = sim.honest[0]
    data = sim.client_data(c)
    head = sim.initial_private
    sgd = SGDSettings.from_config(sim.cfg)
    g0 = Guard(0.0, 2, 1, sim.guard.rep_size, sim.guard.head_size)
    state = g0.update(sim.model, sgd, sim.shared, head, g0.initial_state(), data, torch.Generator().manual_seed(5))
    set_flat(sim.model, "rep", sim.shared)
    set_flat(sim.model, "head", head)
    train_phases(sim.model, *data, [("head", 1), ("rep", 2)], sgd, torch.Generator().manual_seed(5),
                 reuse_features=False)
    torch.testing.assert_close(state[:g0.rep_size], get_flat(sim.model, "rep"))
    torch.testing.assert_close(state[g0.rep_size:-1], get_flat(sim.model, "head"))
    assert float(state[-1]) == 1.0
    stiff = dataclasses.replace(g0, lam=1e6)                  # lr · λ = 1: each step lands on the anchor
    state = stiff.update(sim.model, dataclasses.replace(sgd, lr=1e-6, momentum=0.0), sim.shared, head,
                         stiff.initial_state(), data, torch.Generator().manual_seed(5))
    torch.testing.assert_close(state[:g0.rep_size], sim.shared, atol=1e-4, rtol=0)


def test_the_guard_never_reads_test_data(tiny_cfg):
    """Scrambling every test label changes the accuracies, never which model the guard picks, nor training."""
    cfg = tiny_cfg(*GUARD)
    plain = Simulation(cfg)
    scrambled = Simulation(cfg)
    scrambled.data.test_y = scrambled.data.test_y[torch.randperm(len(scrambled.data.test_y),
                                                                 generator=torch.Generator().manual_seed(0))]
    a, b = plain.run(), scrambled.run()
    assert [h["guard_personal_share"] for h in a["history"]] == [h["guard_personal_share"] for h in b["history"]]
    assert any(h["guard_personal_share"] > 0 for h in a["history"])
    torch.testing.assert_close(plain.shared, scrambled.shared)
    torch.testing.assert_close(plain.guard_state, scrambled.guard_state)
    assert a["final"]["honest_acc_mean"] != b["final"]["honest_acc_mean"]


def test_a_guarded_run_resumes_identically_and_keeps_the_personal_models(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*GUARD, "train.checkpoint_every=3")
    full = Simulation(cfg, out_dir=tmp_path / "full").run()
    first = Simulation(cfg.replace(train__rounds=3), out_dir=tmp_path / "part")
    first.run()
    resumed = Simulation(cfg, out_dir=tmp_path / "part")
    resumed.restore(tmp_path / "part")
    torch.testing.assert_close(resumed.guard_state, first.guard_state)
    assert float(resumed.guard_state[:, -1].sum()) > 0
    rest = resumed.run()
    assert rest["final"]["honest_acc_mean"] == full["final"]["honest_acc_mean"]
    assert rest["history"][-1]["guard_personal_share"] == full["history"][-1]["guard_personal_share"]


def test_the_guard_needs_a_private_head(tiny_cfg):
    with pytest.raises(ConfigError, match="'guard.name' = 'ditto' needs an algorithm that shares φ"):
        tiny_cfg("guard.name=ditto", "algorithm.name=fedavg")
