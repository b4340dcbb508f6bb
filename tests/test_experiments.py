"""The committed comparative grids and the scripts that turn sweeps and runs into docs/results (issue 9)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from brmtrl.cli import main
from brmtrl.engine import Simulation
from brmtrl.report import write_outputs
from brmtrl.sweep import load_grid

from .test_sweep import BASE, write_grid

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = {"fedrep", "fedavg", "fedavg_ft", "fedper", "lg_fedavg", "local"}


def _script(name: str):
    sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, dataset", [("compare_cifar10", "cifar10"), ("compare_femnist", "femnist")])
def test_the_committed_comparative_grids_cover_the_study(name: str, dataset: str) -> None:
    grid = load_grid(ROOT / "configs" / "grids" / f"{name}.toml")
    assert len(grid.cells) == 126
    by = {(c.grid["algorithm.name"], c.grid["defense"], c.grid["attack.name"], c.grid["seed"]): c for c in grid.cells}
    assert {k[0] for k in by} == ALGORITHMS and {k[2] for k in by} == {"none", "sign_flip", "alie"}
    assert {k[3] for k in by} == {0, 1}
    # every federated algorithm with every defense; local shares nothing, so it runs with the mean only
    assert {k[1] for k in by if k[0] == "fedavg"} == {"mean", "geometric_median", "krum", "nnm_gm"}
    assert {k[1] for k in by if k[0] == "local"} == {"mean"}
    nnm = by["fedrep", "nnm_gm", "alie", 0].config
    assert nnm["aggregator.pre"] == ["nnm"] and nnm["aggregator.name"] == "geometric_median"
    assert by["fedrep", "geometric_median", "none", 1].config["aggregator.pre"] == []
    assert all(c.config["dataset.name"] == dataset and c.config["attack.byzantine_fraction"] == 0.2
               for c in grid.cells)


@pytest.mark.parametrize("dataset", ["cifar10", "femnist"])
def test_the_paper_length_grids_keep_the_fair_studys_cells_and_budgets(dataset: str) -> None:
    """configs/grids/paper_*.toml (for a GPU): the paper's 100 rounds (CIFAR-10 with its augmentation, FEMNIST
    on its natural writers), one local budget, FedRep's protocol, and the fair study's cells: every method
    without attack; brmtrl and FedRep + mean under every attack; the whole-model baselines + GM under two."""
    grid = load_grid(ROOT / "configs" / "grids" / f"paper_{dataset}.toml")
    cells = {(c.grid["method"], c.grid["attack"], c.grid["seed"]): c.config for c in grid.cells}
    assert len(cells) == 38 and {s for _, _, s in cells} == {0, 1}
    assert {m for m, a, _ in cells if a == "none"} == {"brmtrl", "fedrep_mean", "fedavg_mean", "fedavg_ft_mean",
                                                       "fedper_mean", "lg_fedavg_mean", "local"}
    assert {m for m, a, _ in cells if a == "alie_z3"} == {"brmtrl", "fedrep_mean"}
    assert {m for m, a, _ in cells if a == "sign_flip"} == {"brmtrl", "fedrep_mean", "fedavg_gm", "fedper_gm",
                                                            "lg_fedavg_gm"}
    for cfg in cells.values():
        assert cfg["train.rounds"] == 100 and cfg["train.local_epochs"] == "auto" and cfg["eval.protocol"] == "fedrep"
        assert cfg["dataset.name"] == dataset and cfg["device"] == "auto"
    if dataset == "cifar10":
        assert all(c["dataset.augment"] for c in cells.values())
    else:
        assert all(c["dataset.partition"] == "natural" and c["dataset.num_clients"] == 105 for c in cells.values())
    assert cells["brmtrl", "alie_z3", 0]["attack.z"] == 3.0 and cells["brmtrl", "alie", 0]["attack.z"] != 3.0


def test_every_committed_grid_loads() -> None:
    grids = sorted((ROOT / "configs" / "grids").glob("*.toml"))
    assert len(grids) >= 15
    for path in grids:
        assert load_grid(path).cells, path.name


COMPARE = """
config = "base.toml"
[set]
"train.rounds" = 3
"train.eval_every" = 1
[grid]
"algorithm.name" = ["fedrep", "fedavg"]
defense = ["mean", "gm"]
"attack.name" = ["none", "sign_flip"]
seed = [0, 1]
[variants.defense]
mean = { "aggregator.name" = "mean" }
gm = { "aggregator.name" = "geometric_median" }
"""


def test_grid_report_tabulates_the_sweep_it_reads(tmp_path: Path) -> None:
    grid = write_grid(tmp_path, COMPARE, BASE)
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", str(grid), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    lines = _script("results").grid_report(out, "tiny", tmp_path / "docs")
    text = (tmp_path / "docs" / "tiny.md").read_text()
    assert text == "\n".join(lines) + "\n" and "16 of 16 cells done" in text
    acc = {(r["algorithm.name"], r["defense"], r["attack.name"], r["seed"]): float(r["honest_acc_mean"]) for r in rows}
    ref = [acc["fedrep", "mean", "none", s] for s in ("0", "1")]
    mean, std = sum(ref) / 2, abs(ref[0] - ref[1]) / 2
    assert f"**{mean:.3f} ± {std:.3f}**" in text     # attack-free FedRep, mean ± std over the two seeds
    row = next(line for line in lines if line.startswith("| FedAvg + `gm` | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    vals = [acc["fedavg", "gm", "sign_flip", s] for s in ("0", "1")]
    assert cells[2].startswith(f"{sum(vals) / 2:.3f}")
    assert (tmp_path / "docs" / "tiny-heatmap.png").stat().st_size > 0
    assert (tmp_path / "docs" / "tiny-curves.png").stat().st_size > 0


def test_runs_report_gives_final_accuracy_curves_and_the_transfer_table(tiny_cfg, tmp_path: Path) -> None:
    common = ["transfer.clients=4", "transfer.shots=[1, 5]", "train.rounds=4", "transfer.epochs=5",
              "transfer.scratch_epochs=5", "transfer.epochs_grid=[5]", "transfer.lr_grid=[0.03, 0.1]"]  # the report
    runs = {}
    for name, extra in (("fedavg", ["algorithm.name=fedavg"]), ("rep", [])):
        if name == "rep":
            extra = [f"transfer.fedavg_run={json.dumps(str(tmp_path / 'fedavg'))}"]
        res = Simulation(tiny_cfg(*common, *extra), out_dir=tmp_path / name).run()
        write_outputs(tmp_path / name, res)
        runs[name] = res
    lines = _script("results").runs_report([tmp_path / "rep", tmp_path / "fedavg"], ["rep", "avg"], "t",
                                           tmp_path / "docs")
    text = "\n".join(lines)
    assert f"| rep | `{tmp_path / 'rep'}` | {runs['rep']['final']['honest_acc_mean']:.4f} |" in text
    rep = runs["rep"]["transfer"]["methods"]
    k5 = rep["representation"]["5"]
    assert f"| 5 | {k5['mean']:.3f} ± {k5['std']:.3f}" in text
    # the shared baselines get one column each, not one per run
    header = next(line for line in lines if line.startswith("| k per class"))
    assert header.count("from scratch") == 1 and header.count("fine-tuned") == 1
    gain = 100 * (k5["mean"] - rep["scratch"]["5"]["mean"])
    assert f"φ + fresh head: rep, k = 5: {gain:+.1f} points" in text
    assert (tmp_path / "docs" / "t-curves.png").stat().st_size > 0
    assert (tmp_path / "docs" / "t-transfer-rep.png").stat().st_size > 0
    assert (tmp_path / "docs" / "t-transfer.png").stat().st_size > 0


FAIR_GRID = """
config = "base.toml"
[set]
"train.rounds" = 3
"eval.protocol" = "fedrep"
[grid]
method = ["fedrep_mean", "brmtrl", "local"]
attack = ["none", "sign_flip"]
seed = [0, 1]
[variants.method]
fedrep_mean = { "algorithm.name" = "fedrep", "aggregator.name" = "mean" }
brmtrl = { "algorithm.name" = "brmtrl", "aggregator.name" = "geometric_median", "reputation.name" = "flags" }
local = { "algorithm.name" = "local", "aggregator.name" = "mean" }
[variants.attack]
none = { "attack.name" = "none" }
sign_flip = { "attack.name" = "sign_flip" }
[[exclude]]
method = "local"
attack = "sign_flip"
"""


def test_the_fair_study_takes_every_gap_on_the_same_honest_clients(tmp_path: Path) -> None:
    fair = _script("fair_study")
    grid = write_grid(tmp_path, FAIR_GRID)
    assert main(["sweep", "--grid", str(grid), "--out", str(tmp_path / "sweep"), "--quiet", "--threads", "1"]) == 0
    data = fair.export(tmp_path / "sweep")
    assert len(data["cells"]) == 10 and data["weighted"] is True
    by = {(c["method"], c["attack"], c["seed"]): c for c in data["cells"]}
    lines = fair.tables(data)
    gaps = next(i for i, line in enumerate(lines) if line.startswith("Gap to attack-free FedRep"))
    row = next(line for line in lines[gaps:] if line.startswith("| `brmtrl` |"))
    # by hand: brmtrl under sign flip minus FedRep's clean run on the same (honest) clients, per seed
    diffs = []
    for s in (0, 1):
        ref = by[("fedrep_mean", "none", s)]["client_scores"]
        honest = set(ref["clients"]) - set(by[("brmtrl", "sign_flip", s)]["byzantine"])
        assert honest and len(honest) < len(ref["clients"])
        n = sum(k for c, k in zip(ref["clients"], ref["test_samples"]) if c in honest)
        ref_acc = sum(a * k for c, a, k in zip(ref["clients"], ref["accuracy"], ref["test_samples"]) if c in honest) / n
        diffs.append(100 * (by[("brmtrl", "sign_flip", s)]["honest_acc_mean"] - ref_acc))
    assert row.split("|")[3].strip() == f"{sum(diffs) / 2:+.1f}"
    local = next(line for line in lines[gaps:] if line.startswith("| `local` |"))
    assert local.split("|")[3].strip().endswith("†")          # its clean run stands for it under attack
    # the published form regenerates from the data alone
    (tmp_path / "data.json").write_text(json.dumps(data))
    done = __import__("subprocess").run([sys.executable, str(ROOT / "experiments" / "fair_study.py"), "--data",
                                         str(tmp_path / "data.json"), "--name", "x", "--out", str(tmp_path / "out")],
                                        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "x.md").read_text() == "\n".join(lines) + "\n"


def test_merged_study_data_keeps_committed_cells_the_sweep_lacks(tmp_path: Path) -> None:
    """--merge: cells published earlier (their runs gone with a fresh checkout) join the cells a sweep
    finished since; a cell the sweep holds wins; the tables are those of the whole data."""
    fair = _script("fair_study")
    common = _script("_common")
    cells = [{"method": m, "attack": "none", "seed": s, "honest_acc_mean": v}
             for (m, s), v in {("fedrep_mean", 0): 0.5, ("fedrep_mean", 1): 0.6, ("local", 0): 0.4}.items()]
    old = {"sweep": {"path": "a", "command": "x", "wall_s": 1.0}, "cells_total": 4, "cells": cells[:2],
           "weighted": True}
    (tmp_path / "old.json").write_text(json.dumps(old))
    new = {"sweep": {"path": "b", "command": "y", "wall_s": 2.0}, "cells_total": 4,
           "cells": [dict(cells[1], honest_acc_mean=0.65), cells[2]]}
    merged = common.merge(new, tmp_path / "old.json", "cells", lambda c: (c["method"], c["attack"], c["seed"]))
    got = {(c["method"], c["seed"]): c["honest_acc_mean"] for c in merged["cells"]}
    assert got == {("fedrep_mean", 0): 0.5, ("fedrep_mean", 1): 0.65, ("local", 0): 0.4}
    assert merged["sweep"] == {"path": "a; b", "command": "x && y", "wall_s": 2.0} and merged["weighted"] is True
    (tmp_path / "merged.json").write_text(json.dumps(merged))                # merging the merged file again
    again = common.merge(new, tmp_path / "merged.json", "cells", lambda c: (c["method"], c["attack"], c["seed"]))
    assert again == merged
    assert any("`fedrep_mean`" in line for line in fair.tables(merged))
    # a second grid's sweep (the GM grid beside the fair one): its cells add to the total, per sweep
    other = {"sweep": {"path": "c", "command": "z", "wall_s": 3.0}, "cells_total": 12, "totals": {"c": 12},
             "cells": [{"method": "fedavg_gm", "attack": "none", "seed": 0, "honest_acc_mean": 0.7}]}
    both = common.merge(other, tmp_path / "merged.json", "cells", lambda c: (c["method"], c["attack"], c["seed"]))
    assert both["totals"] == {"a": 4, "c": 12} and both["cells_total"] == 16 and len(both["cells"]) == 4
    assert fair.tables(both)[0].startswith("Sweep `a; b; c`: 4 of 16 cells done")


def test_archived_runs_are_not_ignored_by_git() -> None:
    """The archive of finished runs lives in docs/results/data/runs: only the top-level runs/ is ignored."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    check = ["git", "-C", str(ROOT), "check-ignore", "-q"]
    assert subprocess.run([*check, "runs/x/results.json"]).returncode == 0
    assert subprocess.run([*check, "docs/results/data/runs/x/results.json"]).returncode == 1


def test_archived_runs_keep_only_finished_results_and_restore_without_overwriting(tmp_path: Path) -> None:
    """experiments/archive_runs.py: save keeps each finished run's results.json and cell.json (and the
    sweep's own files), never a checkpoint or an unfinished run; restore fills in what is missing only."""
    archive = _script("archive_runs")
    src = tmp_path / "runs"
    done = {"config": {"train": {"rounds": 3}}, "final": {"rounds": 3, "honest_acc_mean": 0.5}}
    half = {"config": {"train": {"rounds": 3}}, "final": {"rounds": 2}}
    for name, res in (("a-done", done), ("b-half", half), ("c-none", None)):
        (src / name).mkdir(parents=True)
        (src / name / "checkpoint.pt").write_bytes(b"state")
        (src / name / "cell.json").write_text("{}")
        if res is not None:
            (src / name / "results.json").write_text(json.dumps(res))
    (src / "sweep.json").write_text("{}")
    kept = archive.save(src, tmp_path / "archive")
    assert kept == ["a-done"]
    assert sorted(str(p.relative_to(tmp_path / "archive")) for p in (tmp_path / "archive").rglob("*") if p.is_file()) \
        == ["a-done/cell.json", "a-done/results.json", "sweep.json"]
    fresh = tmp_path / "fresh"
    (fresh / "a-done").mkdir(parents=True)
    (fresh / "a-done" / "cell.json").write_text('{"mine": 1}')
    assert archive.restore(tmp_path / "archive", fresh) == ["a-done/results.json", "sweep.json"]
    assert (fresh / "a-done" / "cell.json").read_text() == '{"mine": 1}'          # nothing overwritten
    assert json.loads((fresh / "a-done" / "results.json").read_text()) == done
