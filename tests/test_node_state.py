"""A node's on-disk state (brmtrl.flower.node_state): which round's heads count, atomic writes, and a
state directory of another experiment refused by name."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")

from brmtrl.flower.node_state import NodeState, StateDirError  # noqa: E402


def t(v: float) -> torch.Tensor:
    return torch.full((3,), v)


def test_training_round_t_starts_from_the_state_before_t_and_evaluation_reads_t(tmp_path):
    st = NodeState(tmp_path / "s", "fp")
    assert st.load(4, 1, training=True) == {}                  # before its first round: nothing
    st.save(4, 1, {"private": t(1)})
    st.save(4, 3, {"private": t(3), "guard": t(30)})
    assert torch.equal(st.load(4, 3, training=True)["private"], t(1))    # round 3 again: from round 1's
    assert torch.equal(st.load(4, 3, training=False)["private"], t(3))   # evaluation after round 3
    assert torch.equal(st.load(4, 5, training=True)["guard"], t(30))
    # a server resumed from round 2 redoes round 3: round 3's state is dropped, round 1's is the start
    st.save(4, 3, {"private": t(33)})
    assert torch.equal(st.load(4, 4, training=True)["private"], t(33))
    st.save(4, 4, {"private": t(4)})
    st.save(4, 6, {"private": t(6)})
    data = torch.load(tmp_path / "s" / "client-4.pt", weights_only=True)
    assert sorted(data["rounds"]) == [4, 6]                     # the last two rounds only
    # a fresh run of the same experiment in the same folder starts from nothing
    assert st.load(4, 1, training=True) == {}
    st.save(4, 1, {"private": t(-1)})
    assert sorted(torch.load(tmp_path / "s" / "client-4.pt", weights_only=True)["rounds"]) == [1]
    assert not list((tmp_path / "s").glob(".client-*"))        # no temporary file left


def test_a_state_dir_of_another_experiment_is_refused_by_name(tmp_path):
    NodeState(tmp_path / "s", "fp-a").save(2, 1, {"private": t(1)})
    other = NodeState(tmp_path / "s", "fp-b")
    with pytest.raises(StateDirError, match=r"node config 'state-dir' = '.*/s' holds client 2's state of another "
                                            r"experiment"):
        other.load(2, 2, training=True)
    (tmp_path / "s" / "client-3.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StateDirError, match=r"client-3.pt' is unreadable"):
        other.load(3, 1, training=True)


def _train_message(cfg, shared, pids, r):
    import time

    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

    from brmtrl.flower.node import config_to_json

    meta = Metadata(run_id=1, message_id=f"m{r}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id=str(r), created_at=time.time(), ttl=60.0, message_type="train")
    content = RecordDict({"arrays": ArrayRecord({"shared": Array(shared.numpy())}),
                          "config": ConfigRecord({"brmtrl-config": config_to_json(cfg), "server-round": r,
                                                  "partition-ids": pids})})
    return Message(content=content, metadata=meta)


def test_the_client_app_keeps_heads_on_disk_sends_only_deltas_and_refuses_another_experiments_dir(tiny_cfg, tmp_path):
    """The ClientApp's train path (in process): the reply carries one φ delta per client and its metrics,
    nothing private; the heads are in the state-dir; a node restarted with a fresh memory trains round 2
    from them; another experiment's state-dir is refused by name."""
    from flwr.app import Context, RecordDict

    from brmtrl.engine import Simulation
    from brmtrl.flower import client_app
    from brmtrl.flower.records import tensor

    cfg = tiny_cfg("attack.name=none", "attack.byzantine_fraction=0.0")
    sim = Simulation(cfg)
    nc = {"partition-ids": "0-1", "byzantine": "false", "state-dir": str(tmp_path / "state")}
    ctx = Context(run_id=1, node_id=7, node_config=nc, state=RecordDict(), run_config={})
    reply = client_app.train(_train_message(cfg, sim.shared, [0, 1], 1), ctx)
    assert set(reply.content.array_records) == {"arrays"}
    arrays = reply.content.array_records["arrays"]
    assert set(arrays) == {"delta-0", "delta-1"}
    assert all(tensor(arrays, k).numel() == sim.shared.numel() for k in arrays)   # φ's size: no head
    assert set(reply.content.metric_records["metrics"]) == {"partition-ids", "num-examples", "byzantine", "train-s"}
    heads = {p: NodeState(tmp_path / "state", "x")._path(p) for p in (0, 1)}
    assert all(path.is_file() for path in heads.values())
    # a restarted node (empty memory) trains round 2 from its disk exactly as a node that kept its memory
    # (and no state-dir) does, and not as a node with fresh heads would
    mem = {"partition-ids": "0-1", "byzantine": "false"}
    memory = Context(run_id=1, node_id=9, node_config=mem, state=RecordDict(), run_config={})
    client_app.train(_train_message(cfg, sim.shared, [0, 1], 1), memory)
    kept = client_app.train(_train_message(cfg, sim.shared, [0], 2), memory)
    fresh = Context(run_id=2, node_id=8, node_config=nc, state=RecordDict(), run_config={})
    again = client_app.train(_train_message(cfg, sim.shared, [0], 2), fresh)
    blank = client_app.train(_train_message(cfg, sim.shared, [0], 2),
                             Context(run_id=3, node_id=10, node_config=mem, state=RecordDict(), run_config={}))

    def delta(m):
        return tensor(m.content.array_records["arrays"], "delta-0")

    assert torch.equal(delta(kept), delta(again)) and not torch.equal(delta(blank), delta(again))
    other = tiny_cfg("attack.name=none", "attack.byzantine_fraction=0.0", "seed=1")
    with pytest.raises(StateDirError, match=r"'state-dir' = '.*/state' holds client 0's state of another experiment"):
        client_app.train(_train_message(other, sim.shared, [0], 1), fresh)
    # a message for a client without state (2) and one of another experiment (0): refused before either
    # trains, so the state-dir is left as it was
    before = {p.name: p.read_bytes() for p in (tmp_path / "state").iterdir()}
    wide = Context(run_id=4, node_id=11, node_config={**nc, "partition-ids": "0-3"}, state=RecordDict(), run_config={})
    with pytest.raises(StateDirError, match=r"holds client 0's state of another experiment"):
        client_app.train(_train_message(other, sim.shared, [2, 0], 1), wide)
    assert {p.name: p.read_bytes() for p in (tmp_path / "state").iterdir()} == before
