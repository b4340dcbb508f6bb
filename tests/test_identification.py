"""Byzantine identification: precision and recall of the clients the server step flags (issue 8)."""

from __future__ import annotations

import math

from brmtrl.engine import Simulation
from brmtrl.identification import flag_counts, overall
from brmtrl.report import write_outputs


def test_flag_counts_known_answer():
    c = flag_counts(senders=[1, 2, 3, 4, 5], flagged=[1, 2, 9], byzantine=[1, 3, 7])
    # 9 and 7 did not send: ignored; 1 flagged Byzantine, 2 flagged honest, 3 missed, 4 and 5 clean
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 1, 1, 2)
    d = c.as_dict(4)
    assert d["round"] == 4 and d["precision"] == 0.5 and d["recall"] == 0.5
    none = flag_counts([1, 2], [], [])
    assert none.as_dict(1)["precision"] is None and none.as_dict(1)["recall"] is None
    tot = overall([c.as_dict(1), flag_counts([1, 2], [1], [1]).as_dict(2)])
    assert (tot["tp"], tot["fp"], tot["fn"], tot["tn"]) == (2, 1, 1, 3)
    assert math.isclose(tot["precision"], 2 / 3) and math.isclose(tot["recall"], 2 / 3)


def test_rejected_nan_updates_are_flagged_with_perfect_precision_and_recall(tiny_cfg, tmp_path):
    sim = Simulation(tiny_cfg("attack.name=random", "attack.magnitude=1e300", "attack.byzantine_fraction=0.2",
                              "aggregator.name=mean", "aggregator.max_norm=1e6"))
    res = sim.run()
    ident = res["identification"]
    assert len(ident["rounds"]) == sim.cfg["train.rounds"]
    byz = set(sim.byzantine)
    for r in ident["rounds"]:
        assert set(r["flagged"]) <= byz and r["fp"] == 0 and r["fn"] == 0
    assert ident["overall"]["tp"] > 0 and ident["overall"]["precision"] == 1.0 and ident["overall"]["recall"] == 1.0
    write_outputs(tmp_path, res)
    assert (tmp_path / "identification.png").stat().st_size > 0


def test_the_mean_flags_nobody(tiny_cfg):
    res = Simulation(tiny_cfg("attack.name=sign_flip", "attack.byzantine_fraction=0.2", "aggregator.name=mean")).run()
    o = res["identification"]["overall"]
    assert o["tp"] == 0 and o["fp"] == 0 and o["precision"] is None and o["recall"] == 0.0
