"""The server-side reputation (issue 18, brmtrl.reputation): who it excludes and when, what the server
does with an excluded client's update, that it reads no simulated truth, that it survives a checkpoint
and that both engines agree."""

from __future__ import annotations

import pytest
import torch

from brmtrl.config import server_view
from brmtrl.engine import Simulation
from brmtrl.reputation import Reputation, without
from brmtrl.server import Aggregation, server_step

REPUTATION = ("reputation.name=flags", "attack.name=sign_flip", "attack.byzantine_fraction=0.2",
              "aggregator.name=geometric_median", "train.rounds=12", "train.eval_every=4")


def test_a_client_is_excluded_once_flagged_in_the_threshold_of_its_recent_rounds():
    rep = Reputation(window=4, threshold=0.75, min_rounds=3)
    for r, flagged in enumerate([{"a", "b"}, {"a"}, {"a", "b"}], start=1):
        new = rep.observe(r, ["a", "b", "c"], flagged)
    # after 3 rounds: a flagged 3/3, b 2/3 (< 0.75), c 0/3
    assert new == ["a"] and rep.excluded == {"a": 3}
    assert rep.observe(4, ["a", "b", "c"], {"b"}) == ["b"]          # b: 3 of 4 = 0.75
    assert rep.excluded_among(["a", "b", "c"]) == {"a", "b"}
    # an excluded client is no longer booked; an occasional flag never excludes
    assert rep.recent["a"] == [True, True, True]
    for r in range(5, 30):
        rep.observe(r, ["c"], {"c"} if r % 3 == 0 else set())
    assert "c" not in rep.excluded and len(rep.recent["c"]) == 4   # only the window is kept


def test_no_client_is_judged_before_min_rounds():
    rep = Reputation(window=10, threshold=0.5, min_rounds=3)
    assert rep.observe(1, ["a"], {"a"}) == [] and rep.observe(2, ["a"], {"a"}) == []
    assert rep.observe(3, ["a"], {"a"}) == ["a"]


def test_the_state_round_trips():
    rep = Reputation(window=3, threshold=0.5, min_rounds=2)
    rep.observe(1, [1, 2], {1})
    rep.observe(2, [1, 2], {1})
    other = Reputation(window=3, threshold=0.5, min_rounds=2)
    other.restore(rep.state())
    assert other.state() == rep.state() and other.excluded == {1: 2}
    assert rep.summary([1]) == {"window": 3, "threshold": 0.5, "min_rounds": 2,
                                "excluded": [{"client": 1, "round": 2}], "byzantine_excluded": 1,
                                "honest_excluded": 0}


def test_the_server_rejects_an_excluded_clients_update_and_aggregates_the_rest():
    rep = Reputation(window=5, threshold=0.5, min_rounds=1)
    rep.excluded = {3: 1}
    agg = Aggregation("mean")
    ups = [torch.full((4,), float(v)) for v in (1.0, 2.0, 3.0, 1000.0)]
    step = server_step(ups, [0, 1, 2, 3], agg, size=4, round_=2, reputation=rep)
    torch.testing.assert_close(step.step, torch.full((4,), 2.0, dtype=torch.float64))
    assert step.accepted == [0, 1, 2]
    assert step.rejected == [{"client": 3, "reason": "excluded by reputation (flagged persistently)"}]
    assert step.info["reputation_excluded"] == 1 and rep.recent.get(3) is None


def test_the_adversary_crafts_only_rows_that_count():
    seen = []

    def hook(updates, senders, r):
        seen.append(list(senders))
        return [u * 0 - 1 for u in updates]

    ups = [torch.ones(2) * i for i in range(4)]
    out = without({1, 3}, hook, ups, [0, 1, 2, 3], 5)
    assert seen == [[0, 2]]
    assert [float(u[0]) for u in out] == [-1.0, 1.0, -1.0, 3.0]


def test_sign_flippers_are_excluded_and_no_honest_client(tiny_cfg):
    cfg = tiny_cfg(*REPUTATION)
    sim = Simulation(cfg)
    res = sim.run()
    summary = res["reputation"]
    assert summary["byzantine_excluded"] == len(sim.byzantine) and summary["honest_excluded"] == 0
    assert {e["client"] for e in summary["excluded"]} == set(sim.byzantine)
    # once excluded, a client's update never reaches the rule again
    for ident in res["identification"]["rounds"]:
        late = {e["client"] for e in summary["excluded"] if e["round"] < ident["round"]}
        assert not late & set(ident["accepted"])
    plain = Simulation(tiny_cfg(*REPUTATION[1:])).run()
    assert plain["reputation"] is None
    assert res["final"]["honest_acc_mean"] > plain["final"]["honest_acc_mean"]


def test_the_reputation_reads_no_simulated_truth(tiny_cfg):
    cfg = tiny_cfg(*REPUTATION)
    rep = Reputation.from_config(server_view(cfg))
    assert rep is not None and (rep.window, rep.threshold, rep.min_rounds) == (10, 0.8, 3)
    assert Reputation.from_config(server_view(tiny_cfg())) is None


def test_a_run_with_reputation_resumes_identically(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*REPUTATION, "train.checkpoint_every=4")
    full = Simulation(cfg, out_dir=tmp_path / "full").run()
    first = Simulation(cfg.replace(train__rounds=4), out_dir=tmp_path / "part")
    first.run()
    assert first.reputation is not None and first.reputation.recent
    resumed = Simulation(cfg, out_dir=tmp_path / "part")
    resumed.restore(tmp_path / "part")
    assert resumed.reputation is not None and resumed.reputation.state() == first.reputation.state()
    rest = resumed.run()
    assert rest["reputation"] == full["reputation"]
    assert rest["final"]["honest_acc_mean"] == full["final"]["honest_acc_mean"]


# both engines exclude alike: tests/test_flower.py::test_flower_simulation_matches_the_built_in_engine
