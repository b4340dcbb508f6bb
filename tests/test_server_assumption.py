"""The server's Byzantine assumption is declared, never read from the simulated attack.

A real federation has no attack config and no node admits it is Byzantine, so the f a robust rule
assumes comes from ``aggregator.byzantine_fraction`` / ``aggregator.f`` alone, in every engine. Changing
only ``attack.*`` keys must leave f and the aggregate of the same updates unchanged.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from brmtrl.config import load_config, server_view
from brmtrl.engine import Simulation
from brmtrl.server import Aggregation, hypergeometric_quantile, server_step

from .conftest import CONFIGS

SRC = Path(__file__).resolve().parents[1] / "src" / "brmtrl"

ATTACK_SETTINGS = [
    ["attack.name=none"],
    ["attack.name=sign_flip", "attack.byzantine_fraction=0.2"],
    ["attack.name=gaussian", "attack.byzantine_fraction=0.4", "attack.sigma=3"],
    ["attack.name=alie", "attack.byzantine_fraction=0.1"],
]


def quick(*overrides: str):
    return load_config(CONFIGS / "quick.toml", ["device=cpu", "threads=1", *overrides])


@pytest.mark.parametrize("attack", ATTACK_SETTINGS)
def test_quick_configs_f_is_the_declared_one_whatever_the_attack(attack):
    """Quick config: 50 clients, 20 sampled per round, the server assumes 20 % of 50 = 10 may be
    Byzantine; the 0.9999 quantile of the hypergeometric count among 20 of 50 with 10 marked is 9."""
    cfg = quick(*attack)
    agg = Aggregation.from_config(server_view(cfg), 20, 50)
    assert agg.f == 9 == hypergeometric_quantile(0.9999, 50, 10, 20)
    assert Simulation(cfg).f == 9


def test_the_declared_fraction_and_an_explicit_f_set_it():
    assert Simulation(quick("aggregator.byzantine_fraction=0")).f == 0
    assert Simulation(quick("aggregator.byzantine_fraction=0.1")).f == hypergeometric_quantile(0.9999, 50, 5, 20)
    assert Simulation(quick("aggregator.f=3", "attack.name=none")).f == 3


def test_the_server_view_has_no_attack_keys():
    cfg = quick()
    view = server_view(cfg)
    assert not any(k.startswith("attack.") for k in view)
    assert view["aggregator.byzantine_fraction"] == 0.2
    with pytest.raises(KeyError, match="simulated adversary"):
        view["attack.name"]


def test_server_side_modules_never_name_an_attack_key():
    for path in (SRC / "server.py", SRC / "flower" / "server_app.py"):
        text = path.read_text()
        assert not re.search(r"[\"']attack\.", text), path
        assert "attacks" not in re.findall(r"^from \S+ import (\S+)", text, re.M), path


@pytest.mark.parametrize("attack", ATTACK_SETTINGS[1:])
def test_builtin_engine_same_f_and_same_aggregate_when_only_the_attack_changes(attack):
    clean, attacked = Simulation(quick("attack.name=none")), Simulation(quick(*attack))
    assert clean.agg == attacked.agg
    g = torch.Generator().manual_seed(0)
    updates = [torch.randn(clean.shared.numel(), generator=g) * 0.1 for _ in range(20)]
    updates[:3] = [u + 50.0 for u in updates[:3]]   # three far rows
    senders = list(range(20))
    a, b = clean.server_step(updates, senders, 1), attacked.server_step(updates, senders, 1)
    assert torch.equal(a.step, b.step) and a.info["f_assumed"] == b.info["f_assumed"] == 9
    honest_mean = torch.stack(updates[3:]).double().mean(dim=0)
    assert float(torch.linalg.vector_norm(a.step - honest_mean)) < 1.0   # the defense holds with no attack config


def test_an_omniscient_attack_is_the_adversarys_step_before_the_server():
    """The simulated adversary rewrites the Byzantine rows; the server step that follows is the same
    function, with the same settings, as without any attack."""
    from brmtrl.adversary import omniscient_adversary

    sim = Simulation(quick("attack.name=alie", "attack.byzantine_fraction=0.2"))
    size = sim.shared.numel()
    g = torch.Generator().manual_seed(1)
    updates = [torch.randn(size, generator=g, dtype=torch.float64) for _ in range(6)]
    step = omniscient_adversary(sim.cfg, {0, 1}, size=size)
    assert step is not None and omniscient_adversary(quick(), {0, 1}, size=size) is None  # sign flip: on the node
    crafted = step(updates, [0, 1, 2, 3, 4, 5], 1)
    honest = torch.stack(updates[2:])
    mu, sd = honest.mean(dim=0), honest.std(dim=0)
    from brmtrl.attacks import alie_z
    torch.testing.assert_close(crafted[0], mu - alie_z(6, 2) * sd)
    assert all(torch.equal(crafted[i], updates[i]) for i in range(2, 6))
    assert step(updates, [7, 8, 2, 3, 4, 5], 1) == updates        # no Byzantine sender: nothing changes
    res = server_step(crafted, list(range(6)), sim.agg, size=size, round_=1)
    assert res.info["f_assumed"] == sim.f


# --------------------------------------------------------------------------- the ServerApp
flwr = pytest.importorskip("flwr")


def _reply(node: int, pid: int, update: torch.Tensor):
    from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

    meta = Metadata(run_id=1, message_id=f"m{pid}", src_node_id=node, dst_node_id=0, reply_to_message_id="q",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    content = RecordDict({"arrays": ArrayRecord({f"delta-{pid}": Array(update.numpy())}),
                          "metrics": MetricRecord({"partition-ids": [pid], "train-s": [0.0]})})
    return Message(content=content, metadata=meta)


def _strategy(cfg, size: int, clients: int = 50):
    from brmtrl.flower.server_app import BRMTRLStrategy, Roster

    roster = Roster()
    roster.node_of = {p: 1000 + p for p in range(clients)}
    roster.num_clients, roster.shared_size = clients, size
    roster.byzantine = {0, 1, 2}                      # what the nodes said: for the record only
    return BRMTRLStrategy(cfg, roster, torch.zeros(size))


@pytest.mark.parametrize("attack", ATTACK_SETTINGS[1:])
def test_server_app_same_f_and_same_aggregate_when_only_the_attack_changes(attack):
    size = 64
    clean, attacked = _strategy(quick("attack.name=none"), size), _strategy(quick(*attack), size)
    assert clean.agg == attacked.agg and clean.agg.f == 9
    g = torch.Generator().manual_seed(2)
    sampled = list(range(20))
    updates = [torch.randn(size, generator=g) * 0.1 + (50.0 if p < 3 else 0.0) for p in sampled]
    out = []
    for strategy in (clean, attacked):
        strategy._round = {"t0": time.perf_counter(), "sampled": sampled, "sent": sampled, "unreachable": []}
        arrays, metrics = strategy.aggregate_train(1, [_reply(1000 + p, p, u) for p, u in zip(sampled, updates)])
        assert metrics["f_assumed"] == 9
        out.append(torch.from_numpy(arrays["shared"].numpy()))
    assert torch.equal(out[0], out[1])
    honest_mean = torch.stack(updates[3:]).mean(dim=0)
    assert float(torch.linalg.vector_norm(out[0] - honest_mean)) < 1.0
    with pytest.raises(KeyError):
        clean.cfg["attack.name"]
