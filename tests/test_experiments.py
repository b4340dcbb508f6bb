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
              "transfer.scratch_epochs=5"]
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
