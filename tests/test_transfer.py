"""FedAvg with fine-tuning, and the few-shot transfer study (issue 9)."""

from __future__ import annotations

import json

import pytest
import torch

from brmtrl.config import ConfigError
from brmtrl.engine import Simulation
from brmtrl.local_update import RULES
from brmtrl.report import write_outputs
from brmtrl.transfer import few_shot_sample, shot_stats


def test_few_shot_sample_takes_k_per_class_of_the_clients_own_classes():
    y = torch.tensor([0] * 7 + [2] * 3 + [3] * 10)
    x = torch.arange(len(y)).float()[:, None]
    g = torch.Generator().manual_seed(0)
    xs, ys = few_shot_sample((x, y), 5, g)
    assert ys.tolist() == [0] * 5 + [2] * 3 + [3] * 5      # class 2 has only 3: all of them
    assert torch.equal(y[xs[:, 0].long()], ys)              # the samples keep their labels
    assert len(set(xs[:, 0].tolist())) == len(ys)           # no repeats
    again = few_shot_sample((x, y), 5, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], xs)


def test_shot_stats_ignore_clients_without_test_data():
    s = shot_stats([0.5, float("nan"), 1.0])
    assert s == {"mean": 0.75, "std": 0.25, "min": 0.5, "clients": 2}


def test_fedavg_ft_shares_everything_and_only_fine_tunes_for_evaluation(tiny_cfg):
    assert RULES["fedavg_ft"].shared == "all" and RULES["fedavg_ft"].private == "none"
    plain = Simulation(tiny_cfg("algorithm.name=fedavg", "train.rounds=6"))
    tuned = Simulation(tiny_cfg("algorithm.name=fedavg_ft", "train.rounds=6", "finetune.epochs=5"))
    a, b = plain.run(), tuned.run()
    # training is FedAvg's, step for step: the global model is the same and is not touched by fine-tuning
    assert torch.equal(plain.shared, tuned.shared)
    # each client's task has its own head: fine-tuning on its own data must help
    assert b["final"]["honest_acc_mean"] > a["final"]["honest_acc_mean"] + 0.05
    head_only = Simulation(tiny_cfg("algorithm.name=fedavg_ft", "train.rounds=6", "finetune.part=head"))
    c = head_only.run()
    assert torch.equal(head_only.shared, plain.shared)
    assert c["final"]["honest_acc_mean"] != b["final"]["honest_acc_mean"]


def test_transfer_shots_compare_representation_fedavg_and_scratch(tiny_cfg, tmp_path):
    common = ["transfer.clients=4", "transfer.shots=[1, 5]", "train.rounds=8", "attack.name=sign_flip",
              "attack.byzantine_fraction=0.2",   # short grids: the study's structure, not its 100-epoch fits
              "transfer.epochs=20", "transfer.scratch_epochs=20", "transfer.epochs_grid=[5, 20]",
              "transfer.lr_grid=[0.03, 0.1]"]
    fedavg_dir = tmp_path / "fedavg"
    fa = Simulation(tiny_cfg("algorithm.name=fedavg", *common), out_dir=fedavg_dir)
    fa_res = fa.run()
    assert set(fa_res["transfer"]["methods"]) == {"fedavg_finetuned", "scratch"}
    sim = Simulation(tiny_cfg(*common, f"transfer.fedavg_run={json.dumps(str(fedavg_dir))}"), out_dir=tmp_path / "br")
    res = sim.run()
    tr = res["transfer"]
    assert tr["shots"] == [1, 5] and tr["clients"] == sim.holdout and len(sim.holdout) == 4
    assert set(tr["methods"]) == {"representation", "fedavg_finetuned", "scratch"}
    for method in tr["methods"].values():
        for k in ("1", "5"):
            s = method[k]
            assert s["clients"] == 4 and 0.0 <= s["min"] <= s["mean"] <= 1.0
    # new clients were never trained on, never Byzantine
    assert not set(sim.holdout) & set(sim.training_clients) and not set(sim.holdout) & set(sim.byzantine)
    # the FedAvg baseline is the FedAvg run's own study on the same samples
    assert tr["methods"]["fedavg_finetuned"] == fa_res["transfer"]["methods"]["fedavg_finetuned"]
    assert tr["methods"]["scratch"] == fa_res["transfer"]["methods"]["scratch"]
    write_outputs(tmp_path / "br", res)
    assert (tmp_path / "br" / "transfer.png").stat().st_size > 0


def test_transfer_configuration_errors(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="transfer.shots"):
        tiny_cfg("transfer.shots=[5]")
    with pytest.raises(ConfigError, match="transfer.shots"):
        tiny_cfg("transfer.clients=2", "transfer.shots=[5, 5]")
    brmtrl_dir = tmp_path / "br"
    Simulation(tiny_cfg("transfer.clients=2", "train.rounds=2"), out_dir=brmtrl_dir).run()
    sim = Simulation(tiny_cfg("transfer.clients=2", "transfer.shots=[2]", "train.rounds=2",
                              f"transfer.fedavg_run={json.dumps(str(brmtrl_dir))}"))
    with pytest.raises(ConfigError, match="transfer.fedavg_run.*'brmtrl' run"):
        sim.run()
    sim = Simulation(tiny_cfg("transfer.clients=2", "transfer.shots=[2]", "train.rounds=2",
                              f"transfer.fedavg_run={json.dumps(str(tmp_path / 'missing'))}"))
    with pytest.raises(ConfigError, match="transfer.fedavg_run"):
        sim.run()


def test_transfer_settings_are_chosen_on_a_validation_part_of_the_shots_never_on_test_data(tiny_cfg):
    from brmtrl.client import EvalResult
    from brmtrl.transfer import select_on_validation, validation_split

    x = torch.arange(12, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2])
    fit, val = validation_split((x, y))
    assert sorted(val[1].tolist()) == [0, 1, 2] and len(fit[1]) == 9          # one held out per class
    assert set(val[0].flatten().tolist()) == {9.0, 10.0, 11.0}                  # the last of each class
    assert validation_split((x[:4], torch.tensor([0, 0, 1, 2]))) is None        # a class with one sample
    seen = []

    def fake(train, test, epochs, lr):
        seen.append((len(train[1]), len(test[1])))
        return EvalResult({(30, 0.1): 0.9, (10, 0.1): 0.9}.get((epochs, lr), 0.5), {(10, 0.1): 0.2}.get((epochs, lr), 0.3), 3)

    assert select_on_validation(fake, (x, y), [10, 30], [0.01, 0.1]) == (10, 0.1)   # tie on accuracy: lower loss
    assert seen == [(9, 3)] * 4
    # a scrambled test set changes no choice
    common = ["transfer.clients=3", "transfer.shots=[1, 3]", "train.rounds=3", "transfer.epochs_grid=[5, 20]",
              "transfer.lr_grid=[0.01, 0.1]"]
    a = Simulation(tiny_cfg(*common)).run()["transfer"]
    sim = Simulation(tiny_cfg(*common))
    g = torch.Generator().manual_seed(0)
    sim.data.test_y = sim.data.test_y[torch.randperm(len(sim.data.test_y), generator=g)]
    b = sim.run()["transfer"]
    assert a["select"] == "validation" and a["selected"] == b["selected"]
    assert a["methods"] != b["methods"]
    for method, per_k in a["selected"].items():
        assert all(choice == [100, 0.05] for choice in per_k["1"])   # k = 1: nothing to hold out, fixed settings
        assert all(choice[0] in (5, 20) and choice[1] in (0.01, 0.1) for choice in per_k["3"])
    fixed = Simulation(tiny_cfg(*common, "transfer.select=fixed")).run()["transfer"]
    assert all(choice == [100, 0.05] for per_k in fixed["selected"].values() for v in per_k.values() for choice in v)


def test_the_fedavg_baseline_must_be_a_finished_run_on_the_same_data_and_partition(tiny_cfg, tmp_path):
    common = ["transfer.clients=2", "transfer.shots=[2]", "train.rounds=2"]
    done = tmp_path / "fedavg"
    Simulation(tiny_cfg("algorithm.name=fedavg", *common), out_dir=done).run()
    ok = Simulation(tiny_cfg(*common, f"transfer.fedavg_run={json.dumps(str(done))}")).run()
    assert "fedavg_finetuned" in ok["transfer"]["methods"]
    other = tmp_path / "other"
    Simulation(tiny_cfg("algorithm.name=fedavg", *common, "dataset.noise=0.3"), out_dir=other).run()
    with pytest.raises(ConfigError, match=r"transfer.fedavg_run.*other data or another partition"):
        Simulation(tiny_cfg(*common, f"transfer.fedavg_run={json.dumps(str(other))}")).run()
    unfinished = tmp_path / "unfinished"
    stopped = Simulation(tiny_cfg("algorithm.name=fedavg", *common, "train.rounds=4"), out_dir=unfinished)
    stopped.round(1)
    stopped.checkpoint(1)   # as a run killed after round 1 of 4 leaves it
    with pytest.raises(ConfigError, match=r"transfer.fedavg_run.*stopped at round 1 of 4"):
        Simulation(tiny_cfg(*common, f"transfer.fedavg_run={json.dumps(str(unfinished))}")).run()
