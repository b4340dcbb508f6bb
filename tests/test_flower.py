"""BR-MTRL on Flower: the Node (Flower-free), the apps on Flower's simulation engine, parity with the
built-in engine. Deployment tests (SuperLink + SuperNodes as processes) are in test_deploy.py."""

from __future__ import annotations

import json

import pytest
import torch

from brmtrl.config import load_config
from brmtrl.engine import Simulation

from .conftest import CONFIGS

flwr = pytest.importorskip("flwr")

from brmtrl.flower.node import Node  # noqa: E402


def small(*overrides: str):
    return load_config(CONFIGS / "quick.toml", ["device=cpu", "threads=1", "dataset.num_clients=10",
                                                "train.rounds=4", "train.eval_every=2",
                                                "flower.backend_cpus=1", *overrides])


def test_node_trains_as_the_built_in_engine_does():
    cfg = small()
    sim = Simulation(cfg)
    r, c = 1, sim.sample_clients(1)[0]
    ref = sim.local_update(c, r)
    node = Node(cfg, c, data=sim.data)
    res, sent = node.train(sim.shared, None, r)
    torch.testing.assert_close(res.delta, ref.delta)
    torch.testing.assert_close(res.private, ref.private)
    assert node.byzantine == (c in sim.byzantine)
    if node.byzantine:  # a sign-flipping node sends -5 x its delta
        torch.testing.assert_close(sent, -5.0 * res.delta)


def test_node_config_overrides_the_role():
    cfg = small()
    sim = Simulation(cfg)
    honest = sim.honest[0]
    node = Node(cfg, honest, byzantine=True, data=sim.data)
    res, sent = node.train(sim.shared, None, 1)
    torch.testing.assert_close(sent, -5.0 * res.delta)
    with pytest.raises(ValueError, match="partition-id"):
        Node(cfg, 99, data=sim.data)


@pytest.mark.slow(seconds=22)
def test_flower_simulation_matches_the_built_in_engine(tmp_path, one_ray_at_a_time):
    """Same config, same seed: the same clients train the same way on both engines, so honest accuracy
    agrees to float tolerance (the Flower path trains each client alone, the built-in engine runs the
    head phase of all sampled clients at once; tested equal in test_fast_paths). One Flower simulation
    checks everything the server and the clients carry across rounds (each Ray start costs the suite more
    than the run): the declared f, an omniscient adaptive attack (the simulation's adversary tunes against
    the server's rule; test_adaptive.py), the server's reputation (test_reputation.py) and the clients'
    guard (test_guard.py)."""
    from brmtrl.flower.simulation import run_flower_simulation

    # f = 1 with NNM: rounds with both Byzantine clients sampled exceed f, one of them (round 2) between two
    # evaluations; seed 3: the reputation excludes a client at round 7
    cfg = small("seed=3", "aggregator.f=1", "aggregator.pre=[\"nnm\"]", "attack.name=opt_alie", "attack.evals=6",
                "guard.name=ditto", "reputation.name=flags", "train.rounds=8", "train.eval_every=3")
    built_in = Simulation(cfg).run()
    flower = run_flower_simulation(cfg, tmp_path / "flower")
    # every round above f is listed, evaluated or not (Flower used to read them off the evaluated rounds)
    assert flower["final"]["rounds_byzantine_exceeded_f"] == built_in["final"]["rounds_byzantine_exceeded_f"] == [2, 8]
    assert flower["engine"] == "flower-simulation"
    assert [h["round"] for h in flower["history"]] == [h["round"] for h in built_in["history"]] == [3, 6, 8]
    for a, b in zip(built_in["history"], flower["history"]):
        assert abs(a["honest_acc_mean"] - b["honest_acc_mean"]) <= 1e-3  # tolerance of this test
        assert a["updates_accepted"] == b["updates_accepted"] and a["byzantine_sampled"] == b["byzantine_sampled"]
        assert a["f_assumed"] == b["f_assumed"] == 1          # the declared assumption, on both engines
    # the server's reputation and the clients' guard carry the same state across rounds on both engines
    assert flower["reputation"] == built_in["reputation"] and built_in["reputation"]["excluded"]
    shares = [h["guard_personal_share"] for h in built_in["history"]]
    assert shares == [h["guard_personal_share"] for h in flower["history"]] and len(set(shares)) > 1
    mine, theirs = built_in["final"]["client_scores"], flower["final"]["client_scores"]
    assert mine["clients"] == theirs["clients"] and mine["test_samples"] == theirs["test_samples"]
    assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-3)   # tolerance of this test
    assert flower["final"]["byzantine_clients"] == built_in["final"]["byzantine_clients"]
    # the same outputs as brmtrl run, with the same keys in results.json
    assert {p.name for p in (tmp_path / "flower").iterdir()} >= {"results.json", "metrics.csv", "accuracy.png"}
    saved = json.loads((tmp_path / "flower" / "results.json").read_text())
    assert set(saved) == set(built_in) - {"data"} | {"data"}  # one schema for both engines
    assert built_in["engine"] == "builtin" and set(saved["data"]) <= set(built_in["data"])
    assert set(built_in["final"]) - {"subspace_distance"} <= set(saved["final"])
    # one RunRecord behind both: the same keys, key by key, and the same values (timings and the float
    # rounding of the batched head phase aside)
    assert set(saved["final"]) == set(built_in["final"]) - {"subspace_distance"}
    for key, value in saved["final"].items():
        assert value == (pytest.approx(built_in["final"][key], abs=1e-3) if isinstance(value, float)
                         else built_in["final"][key]), key
    for a, b in zip(built_in["history"], saved["history"]):
        assert set(b) - set(a) <= {"slowest_node_train_s"} and set(a) - set(b) <= {"subspace_distance"}
        for key in set(a) & set(b):
            if key.endswith("_s"):
                continue
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], abs=1e-3), key
            else:
                assert b[key] == a[key], key
    for section in ("rejected_updates", "short_rounds"):
        assert saved[section] == built_in[section]
    assert [{k: r[k] for k in ("round", "flagged", "accepted")} for r in saved["identification"]["rounds"]] == \
        [{k: r[k] for k in ("round", "flagged", "accepted")} for r in built_in["identification"]["rounds"]]


def _message(**config):
    import time

    from flwr.app import ConfigRecord, Message, Metadata, RecordDict

    meta = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=1, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=60.0, message_type="train")
    return Message(content=RecordDict({"config": ConfigRecord({"brmtrl-config": "{}", "server-round": 0, **config})}),
                   metadata=meta)


def test_outside_a_simulation_a_node_attacks_only_when_its_node_config_says_so():
    from types import SimpleNamespace

    from brmtrl.flower.client_app import byzantine_role

    real, simulated = _message(), _message(**{"brmtrl-roles-from-seed": True})
    node = lambda **nc: SimpleNamespace(node_config=nc)  # noqa: E731
    assert byzantine_role(real, node(), 3) is False                      # a deployed node: honest
    assert byzantine_role(simulated, node(), 3) is None                  # Flower's simulation: the seed decides
    assert byzantine_role(real, node(byzantine=True), 3) is True
    assert byzantine_role(simulated, node(byzantine="false"), 3) is False
    assert byzantine_role(real, node(**{"byzantine-ids": "3,7"}), 3) is True
    assert byzantine_role(real, node(**{"byzantine-ids": "0-2"}), 3) is False
    with pytest.raises(ValueError, match="byzantine-ids"):
        byzantine_role(real, node(**{"byzantine-ids": "three"}), 3)


def test_a_federation_waiting_for_clients_names_the_nodes_that_failed_and_why(monkeypatch):
    """A node whose ClientApp cannot describe itself (its data missing, say) is named with the reason in the
    error the server gives up with, not only in the log."""
    from types import SimpleNamespace

    from brmtrl.errors import FederationError
    from brmtrl.flower import roster
    from brmtrl.flower.roster import discover

    # Flower builds a Message only inside a run: a stand-in that keeps its destination
    monkeypatch.setattr(roster, "Message", lambda content, dst_node_id, message_type: SimpleNamespace(
        metadata=SimpleNamespace(dst_node_id=dst_node_id)))

    def failing(node: int) -> SimpleNamespace:
        return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node), has_error=lambda: True,
                               error=SimpleNamespace(reason="DataError: dataset.root 'data' is not a directory"))

    class Grid:
        def get_node_ids(self) -> list[int]:
            return [11, 12]

        def send_and_receive(self, msgs, timeout):
            return [failing(m.metadata.dst_node_id) for m in msgs]

    with pytest.raises(FederationError) as err:
        discover(Grid(), "{}", expected_clients=4, timeout=0.2)
    text = str(err.value)
    assert text.startswith("0 of 4 clients connected after 0 s; node 11 could not describe itself: DataError")
    assert "node 12 could not describe itself" in text and "fix and restart the failing ones" in text


@pytest.mark.parametrize("preset", [None, "15"])
def test_ray_workers_run_at_normal_priority_unless_the_user_says(tmp_path, monkeypatch, preset):
    """Ray starts its workers (the ClientApps) at niceness 15, where any busy process starves them
    (docs/deployment.md): the simulation asks for 0 before Ray starts, and a user's own setting wins.
    Ray reads the variable when it starts, so that is where it is checked; no Ray is started here (the
    simulation's real start is test_flower_simulation_matches_the_built_in_engine's)."""
    import os

    import flwr.simulation

    from brmtrl.flower import simulation

    if preset is None:
        monkeypatch.delenv("RAY_worker_niceness", raising=False)
    else:
        monkeypatch.setenv("RAY_worker_niceness", preset)
    seen = {}

    def fake_start_ray(init_args):
        seen["niceness at Ray's start"] = os.environ.get("RAY_worker_niceness")
        seen["init_args"] = init_args
        return False                                    # "already running": nothing for the run to stop

    def fake_run_simulation(**kwargs):
        seen["simulated"] = kwargs["backend_config"]["init_args"] == seen["init_args"]
        (tmp_path / "run" / "results.json").write_text("{}")

    monkeypatch.setattr(simulation, "start_ray", fake_start_ray)
    monkeypatch.setattr(flwr.simulation, "run_simulation", fake_run_simulation)
    (tmp_path / "run").mkdir()
    simulation.run_flower_simulation(small(), tmp_path / "run")
    assert seen["niceness at Ray's start"] == (preset or "0")
    assert seen["simulated"] and seen["init_args"]["address"] == "local"   # Flower gets the instance started
