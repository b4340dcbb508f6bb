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
