"""brmtrl sweep / brmtrl report: grid files, cells, resume, workers, summaries and plots."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from brmtrl import sweep as sweep_mod
from brmtrl.cli import main
from brmtrl.rundir import run_builtin
from brmtrl.config import ConfigError
from brmtrl.sweep import expand, load_grid

from .conftest import locked, session_dir

BASE = """
seed = 0
device = "cpu"
[dataset]
name = "synthetic_classification"
num_clients = 20
samples_per_client = 30
test_samples_per_client = 50
dim = 20
rank = 3
num_classes = 4
[model]
name = "linear"
[train]
rounds = 4
participation = 0.5
head_epochs = 2
rep_epochs = 1
lr = 0.05
batch_size = 10
[attack]
byzantine_fraction = 0.2
"""

GRID = """
config = "base.toml"
[set]
"train.rounds" = 3
[grid]
"aggregator.name" = ["mean", "median"]
"attack.name" = ["sign_flip", "gaussian"]
seed = [0, 1]
"""

NUMBERS = ("honest_acc_mean", "honest_acc_std", "honest_acc_min", "honest_loss_mean", "rounds", "status")


def write_grid(folder: Path, grid: str = GRID, base: str = BASE, name: str = "grid.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.toml").write_text(base)
    path = folder / name
    path.write_text(grid)
    return path


def summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open() as fh:
        return {row["cell"]: row for row in csv.DictReader(fh)}


def numbers(out: Path) -> dict[str, tuple[str, ...]]:
    return {cell: tuple(row[k] for k in NUMBERS) for cell, row in summary(out).items()}


def sweep(grid: Path, out: Path, *extra: str) -> int:
    return main(["sweep", "--grid", str(grid), "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted sweep of GRID with one worker: (grid file, sweep directory), read-only. Run once
    per test session: the xdist worker that needs it first runs it, the others wait for it and read it."""
    root = session_dir(tmp_path_factory) / "sweep-full"
    with locked(session_dir(tmp_path_factory) / "sweep-full.lock"):
        if not (root / "done").exists():
            shutil.rmtree(root, ignore_errors=True)
            assert sweep(write_grid(root), root / "sweep", "--threads", "1") == 0
            (root / "done").touch()
    return root / "grid.toml", root / "sweep"


# --------------------------------------------------------------------------- the grid
def test_expand_is_the_product_in_key_order() -> None:
    axes = {"a": [1, 2], "b": ["x", "y", "z"]}
    cells = expand(axes)
    assert len(cells) == 6
    assert cells[:3] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"}]


def test_exclude_skips_cells_matching_every_key_of_one_table() -> None:
    axes = {"a": [1, 2], "b": ["x", "y", "z"]}
    assert expand(axes, [{"a": 1, "b": "x"}]) == [{"a": 1, "b": "y"}, {"a": 1, "b": "z"}, *expand({"a": [2], "b": ["x", "y", "z"]})]
    assert [c["b"] for c in expand(axes, [{"a": 1}, {"b": ["x", "y"]}])] == ["z"]  # a list matches any of its items


def test_grid_cells_have_stable_readable_names(tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path, GRID + '[[exclude]]\n"aggregator.name" = "mean"\n"attack.name" = "gaussian"\n'))
    names = [c.name for c in grid.cells]
    assert len(names) == 6 and len(set(names)) == 6
    assert names[0].startswith("mean-sign_flip-seed0-")
    assert not any(c.grid["aggregator.name"] == "mean" and c.grid["attack.name"] == "gaussian" for c in grid.cells)
    assert names == [c.name for c in load_grid(tmp_path / "grid.toml").cells]
    cell = grid.cells[0]
    assert cell.config["train.rounds"] == 3 and cell.config["aggregator.name"] == "mean"
    assert cell.overrides == {"train.rounds": 3, **cell.grid}


@pytest.mark.parametrize("grid,needles", [
    (GRID.replace('seed = [0, 1]', '"attack.byzantine_fraction" = [0.2, 1.5]'),
     ["cell mean-sign_flip-byzantine_fraction1.5-", "attack.byzantine_fraction=1.5",
      "'attack.byzantine_fraction' must be a float in the range [0, 1)"]),
    (GRID.replace('seed = [0, 1]', '"aggregator.f" = [0, 9]').replace('["mean", "median"]', '["krum"]'),
     ["cell sign_flip-f9-", "'aggregator.f' = 9 is too large for krum"]),
    (GRID.replace('seed = [0, 1]', '"train.lrr" = [0.1]'), ["unknown config key 'train.lrr'"]),
    (GRID.replace('seed = [0, 1]', 'seed = 3'), ["'seed' must be a non-empty list"]),
    (GRID.replace('seed = [0, 1]', 'seed = [0, 0]'), ["'seed' lists a value twice"]),
    (GRID.replace('"train.rounds" = 3', 'seed = 3'), ["'seed' is both in [set] and in [grid]"]),
    (GRID + '[[exclude]]\n"train.lr" = 0.1\n', ["names 'train.lr', which is not a [grid] key"]),
    (GRID + '[[exclude]]\n"attack.name" = "signflip"\n', ["'attack.name' = 'signflip' is not among"]),
    (GRID + '[[exclude]]\nseed = [0, 1]\n', ["leaves no cell to run"]),
    (GRID.replace('config = "base.toml"', 'config = "nope.toml"'), ["nope.toml", "does not exist"]),
    (GRID.replace('config = "base.toml"', ''), ["config = \"FILE.toml\"", "is missing"]),
    (GRID + "[extra]\na = 1\n", ["unknown top-level key 'extra'"]),
    ("[grid\n", ["not valid TOML"]),
])
def test_grid_errors_name_the_file_cell_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], grid: str,
                                                needles: list[str]) -> None:
    path = write_grid(tmp_path, grid)
    assert sweep(path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert str(path) in err or "grid file" in err
    assert not (tmp_path / "out").exists()


def test_load_grid_raises_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cell"):
        load_grid(write_grid(tmp_path, GRID.replace("seed = [0, 1]", '"train.lr" = [0.1, -1.0]')))


# --------------------------------------------------------------------------- a whole sweep
def test_sweep_writes_cells_summaries_and_plots(full: tuple[Path, Path]) -> None:
    grid, out = full
    rows = summary(out)
    assert len(rows) == 8 and {r["status"] for r in rows.values()} == {"done"}
    row = next(iter(rows.values()))
    assert list(row)[:5] == ["cell", "aggregator.name", "attack.name", "seed", "status"]
    assert 0.0 <= float(row["honest_acc_mean"]) <= 1.0 and row["rounds"] == "3" and float(row["wall_s"]) > 0
    cell = json.loads((out / row["cell"] / "cell.json").read_text())
    assert cell["overrides"]["train.rounds"] == 3 and cell["grid"]["seed"] == 0
    assert (out / row["cell"] / "results.json").is_file() and (out / row["cell"] / "metrics.csv").is_file()
    md = (out / "summary.md").read_text()
    assert "| aggregator.name | attack.name | honest accuracy (mean ± std over seeds) | seeds done |" in md
    assert md.count("| 2/2 |") == 4 and " ± " in md
    assert "Command: `brmtrl sweep --grid" in md and "CPUs, torch" in md and "total wall time" in md
    assert (out / "grid.toml").read_text() == grid.read_text()
    for png in ("accuracy.png", "heatmap.png"):
        assert (out / png).stat().st_size > 5000


def test_a_finished_sweep_runs_nothing_again(full: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    grid, out = full[0], tmp_path / "sweep"
    shutil.copytree(full[1], out)          # the shared sweep stays as it is
    monkeypatch.setattr(sweep_mod, "run_cell", lambda *a, **k: pytest.fail("a finished cell ran again"))
    assert sweep(grid, out) == 0
    assert "0 cells run, 8 already done" in capsys.readouterr().out


def test_a_stopped_sweep_with_a_half_run_cell_resumes_with_identical_numbers(
        full: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, reference = full
    grid = write_grid(tmp_path)
    out = tmp_path / "sweep"
    # stopped after 3 cells (--max-cells), then a 4th cell left as a kill would leave it (the real kill: below)
    assert sweep(grid, out, "--threads", "1", "--max-cells", "3") == 0
    cells = load_grid(grid).cells
    assert [summary(out)[c.name]["status"] for c in cells] == ["done"] * 3 + ["missing"] * 5
    # the 4th cell was killed after round 2 of 3: its checkpoint and a short results.json remain
    killed = cells[3]
    run_builtin(killed.config.replace(train__rounds=2, threads=1), out / killed.name, progress=False, resume=False)
    ran: list[str] = []
    restored: list[str] = []
    real_run, real_restore = sweep_mod.run_cell, sweep_mod_restore()
    monkeypatch.setattr(sweep_mod, "run_cell", lambda d, *a: ran.append(Path(d).name) or real_run(d, *a))
    monkeypatch.setattr("brmtrl.engine.Simulation.restore",
                        lambda self, d: restored.append(Path(d).name) or real_restore(self, d))
    assert sweep(grid, out, "--threads", "1") == 0
    assert ran == [c.name for c in cells[3:]] and restored == [killed.name]
    assert numbers(out) == numbers(reference)
    hist = json.loads((out / killed.name / "results.json").read_text())["history"]
    ref = json.loads((reference / killed.name / "results.json").read_text())["history"]
    assert [h["honest_acc_mean"] for h in hist] == [h["honest_acc_mean"] for h in ref] and len(hist) == 3
    assert "5 cells run, 3 already done" in capsys.readouterr().out


def sweep_mod_restore():  # the engine's restore, before a test replaces it
    from brmtrl.engine import Simulation

    return Simulation.restore


def test_deleted_results_run_that_cell_only(full: tuple[Path, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    grid, out = full[0], tmp_path / "sweep"
    shutil.copytree(full[1], out)          # a finished sweep (the shared one stays as it is)
    victim = load_grid(grid).cells[5].name
    (out / victim / "results.json").unlink()
    (out / victim / "checkpoint.pt").unlink()
    ran: list[str] = []
    real_run = sweep_mod.run_cell
    monkeypatch.setattr(sweep_mod, "run_cell", lambda d, *a: ran.append(Path(d).name) or real_run(d, *a))
    assert sweep(grid, out, "--threads", "1") == 0
    assert ran == [victim] and numbers(out) == numbers(full[1])


def test_two_workers_give_the_numbers_of_one(full: tuple[Path, Path], tmp_path: Path) -> None:
    grid = write_grid(tmp_path)
    out = tmp_path / "sweep"
    assert sweep(grid, out, "--workers", "2") == 0  # default threads: cores // 2 per cell
    assert numbers(out) == numbers(full[1])


def test_only_runs_the_matching_cells_and_the_rest_later(full: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path)
    out = tmp_path / "sweep"
    assert sweep(grid, out, "--threads", "1", "--only", "aggregator.name=median", "--only", "seed=1") == 0
    ran = {c: r for c, r in numbers(out).items() if r[-1] == "done"}
    assert all(c.startswith("median-") and "-seed1-" in c for c in ran)
    assert len(ran) == 2 and all(numbers(full[1])[c] == r for c, r in ran.items())
    assert sweep(grid, out, "--threads", "1") == 0                   # without --only: the other 6 cells
    assert numbers(out) == numbers(full[1])
    capsys.readouterr()
    for bad, needle in (("seed=5", "'seed' has no value '5'"), ("lr=0.1", "'lr' is not a grid key"),
                        ("seed", "expected KEY=VALUE")):
        assert sweep(grid, tmp_path / "other", "--only", bad) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "other").exists()


def test_report_on_a_partial_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path)
    out = tmp_path / "sweep"
    assert sweep(grid, out, "--threads", "1", "--max-cells", "2") == 0
    for name in ("summary.csv", "summary.md", "heatmap.png"):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert "summary.md" in capsys.readouterr().out
    statuses = [r["status"] for r in summary(out).values()]
    assert statuses.count("done") == 2 and statuses.count("missing") == 6
    md = (out / "summary.md").read_text()
    assert "| mean | sign_flip |" in md and "| 2/2 |" in md and "| missing | 0/2 |" in md
    assert "## Cells not finished" in md and "not started" in md
    assert (out / "heatmap.png").is_file() and (out / "accuracy.png").is_file()


def test_curves_need_two_evaluated_rounds(tmp_path: Path) -> None:
    from brmtrl.sweep_report import plot_curves

    rows = [{"cell": f"c{i}", "attack.name": a, "seed": 0, "status": "done", "honest_acc_mean": 0.5}
            for i, a in enumerate(["none", "sign_flip"])]
    once = {r["cell"]: [{"round": 10, "honest_acc_mean": 0.5}] for r in rows}  # scored once, at the end
    assert not plot_curves(tmp_path / "once.png", ["attack.name", "seed"], rows, once)
    assert not (tmp_path / "once.png").exists()
    twice = {r["cell"]: [{"round": 5, "honest_acc_mean": 0.4}, {"round": 10, "honest_acc_mean": 0.5}] for r in rows}
    assert plot_curves(tmp_path / "twice.png", ["attack.name", "seed"], rows, twice)
    assert (tmp_path / "twice.png").stat().st_size > 5000


def test_report_of_a_directory_that_is_no_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a sweep directory" in capsys.readouterr().err


def test_a_different_grid_is_refused_unless_forced(full: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    grid = write_grid(tmp_path)
    out = tmp_path / "sweep"
    assert sweep(grid, out, "--threads", "1", "--max-cells", "1") == 0
    other = write_grid(tmp_path, GRID.replace("seed = [0, 1]", "seed = [0, 1, 2]"), name="other.toml")
    assert sweep(other, out) == 2
    err = capsys.readouterr().err
    assert "holds a sweep of a different grid" in err and "--force" in err and len(err.strip().splitlines()) == 1
    ran: list[str] = []
    real_run = sweep_mod.run_cell
    monkeypatch.setattr(sweep_mod, "run_cell", lambda d, *a: ran.append(Path(d).name) or real_run(d, *a))
    assert sweep(other, out, "--threads", "1", "--force", "--max-cells", "1") == 0
    assert ran and ran[0] != load_grid(grid).cells[0].name  # the finished cell is the same: not run again
    assert (out / "grid.toml").read_text() == other.read_text()


def test_a_cell_renamed_by_a_new_axis_value_keeps_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An axis with one value has no place in the cells' names; a second value renames every cell. The
    finished cell keeps its folder under its new name and is not run again."""
    one = GRID.replace('"attack.name" = ["sign_flip", "gaussian"]', '"attack.name" = ["sign_flip"]')
    grid = write_grid(tmp_path, one)
    out = tmp_path / "sweep"
    assert sweep(grid, out, "--threads", "1", "--max-cells", "1") == 0
    first = load_grid(grid).cells[0].name
    before = (out / first / "results.json").read_bytes()
    two = write_grid(tmp_path, GRID, name="two.toml")
    renamed = next(c.name for c in load_grid(two).cells if c.name.endswith(first.rsplit("-", 1)[-1]))
    assert renamed != first and "sign_flip" in renamed
    ran: list[str] = []
    real_run = sweep_mod.run_cell
    monkeypatch.setattr(sweep_mod, "run_cell", lambda d, *a: ran.append(Path(d).name) or real_run(d, *a))
    assert sweep(two, out, "--threads", "1", "--force", "--max-cells", "1") == 0
    assert renamed not in ran and not (out / first).exists()
    assert (out / renamed / "results.json").read_bytes() == before
    assert summary(out)[renamed]["status"] == "done"


def test_a_non_sweep_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert sweep(grid, tmp_path / "busy") == 2
    assert "is not a sweep directory" in capsys.readouterr().err


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path, GRID.replace('"attack.name" = ["sign_flip", "gaussian"]',
                                             '"dataset.name" = ["synthetic_classification", "cifar10"]')
                      .replace('seed = [0, 1]', 'seed = [0]')
                      .replace('"train.rounds" = 3', '"train.rounds" = 2\n"dataset.root" = "/nonexistent/cifar"'))
    out = tmp_path / "sweep"
    assert sweep(grid, out, "--threads", "1") == 1
    captured = capsys.readouterr()
    assert "2 cells run" in captured.out and "2 failed" in captured.out and "/nonexistent/cifar" in captured.out
    rows = list(summary(out).values())
    assert [r["status"] for r in rows] == ["done", "error", "done", "error"]
    failed = next(r for r in rows if r["status"] == "error")
    assert "/nonexistent/cifar" in failed["error"]
    assert "Traceback" in (out / failed["cell"] / "error.log").read_text()
    assert "/nonexistent/cifar" in (out / "summary.md").read_text()


def test_the_committed_example_grid_is_valid() -> None:
    grid = load_grid(Path(__file__).resolve().parents[1] / "configs" / "grids" / "quick_smoke.toml")
    assert len(grid.cells) == 8 and all(c.config["train.rounds"] == 10 for c in grid.cells)


def test_raising_the_rounds_extends_the_finished_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = write_grid(tmp_path, GRID.replace("seed = [0, 1]", "seed = [0]"))
    out = tmp_path / "sweep"
    assert sweep(grid, out, "--threads", "1") == 0
    grid.write_text(grid.read_text().replace('"train.rounds" = 3', '"train.rounds" = 5'))
    restored: list[str] = []
    real_restore = sweep_mod_restore()
    monkeypatch.setattr("brmtrl.engine.Simulation.restore",
                        lambda self, d: restored.append(Path(d).name) or real_restore(self, d))
    assert sweep(grid, out, "--threads", "1", "--max-cells", "1") == 0  # the same experiments, longer: no --force
    assert [r["status"] for r in summary(out).values()] == ["done", "partial", "partial", "partial"]
    assert sweep(grid, out, "--threads", "1") == 0
    assert len(restored) == 4 and {r["rounds"] for r in summary(out).values()} == {"5"}


def test_a_cell_another_process_runs_is_left_to_it(tmp_path: Path) -> None:
    cell = load_grid(write_grid(tmp_path)).cells[0]
    folder = tmp_path / "sweep" / cell.name
    with sweep_mod._cell_lock(folder) as mine:
        assert mine
        outcome = sweep_mod.run_cell(str(folder), dict(cell.config), False, False)
    assert outcome["status"] == "error" and "another process" in outcome["error"]
    assert not (folder / "results.json").exists()


VARIANTS = """
config = "base.toml"
[set]
"train.rounds" = 2
[grid]
defense = ["gm", "nnm_gm"]
"attack.name" = ["sign_flip", "alie"]
[variants.defense]
gm = { "aggregator.name" = "geometric_median" }
nnm_gm = { "aggregator.name" = "geometric_median", "aggregator.pre" = ["nnm"] }
"""


def test_a_variant_axis_sets_its_overrides_together(tmp_path):
    grid = load_grid(write_grid(tmp_path, VARIANTS))
    assert grid.keys == ["defense", "attack.name"]
    cells = {(c.grid["defense"], c.grid["attack.name"]): c for c in grid.cells}
    assert len(cells) == 4
    assert cells["gm", "alie"].config["aggregator.pre"] == [] and cells["gm", "alie"].config["attack.name"] == "alie"
    assert cells["nnm_gm", "sign_flip"].config["aggregator.pre"] == ["nnm"]
    assert cells["nnm_gm", "sign_flip"].config["aggregator.name"] == "geometric_median"
    assert cells["nnm_gm", "sign_flip"].name.startswith("nnm_gm-sign_flip-")


def test_a_sweep_with_variants_writes_a_defense_by_attack_heatmap(tmp_path):
    grid = write_grid(tmp_path, VARIANTS)
    assert sweep(grid, tmp_path / "out", "--threads", "1") == 0
    rows = summary(tmp_path / "out")
    assert {(r["defense"], r["attack.name"]) for r in rows.values()} == {
        ("gm", "sign_flip"), ("gm", "alie"), ("nnm_gm", "sign_flip"), ("nnm_gm", "alie")}
    assert all(r["status"] == "done" for r in rows.values())
    assert (tmp_path / "out" / "heatmap.png").stat().st_size > 0


@pytest.mark.parametrize("edit, needle", [
    (lambda g: g.replace('defense = ["gm", "nnm_gm"]', 'defense = ["gm", "bulyan9"]'), "'bulyan9' is not a variant"),
    (lambda g: g.replace('gm = { "aggregator.name"', 'gm = { "aggregator.nam"'), "aggregator.nam"),
    (lambda g: g.replace('defense = ["gm", "nnm_gm"]\n', ''), "'defense' is not a [grid] key"),
    (lambda g: g.replace('"attack.name" = ["sign_flip", "alie"]',
                         '"attack.name" = ["sign_flip", "alie"]\n"aggregator.name" = ["mean"]'), "sets 'aggregator.name'"),
])
def test_variant_errors_name_the_axis_and_the_key(tmp_path, edit, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load_grid(write_grid(tmp_path, edit(VARIANTS)))
    assert needle in str(err.value), str(err.value)


def test_a_sweep_killed_with_sigkill_mid_cell_resumes_with_identical_numbers(tmp_path: Path) -> None:
    """A real kill: the sweep runs in its own process group and gets SIGKILL while its first cell is between
    two checkpoints; run again, it resumes that cell from its checkpoint and ends with the numbers of an
    uninterrupted sweep."""
    import os
    import signal
    import subprocess
    import sys
    import time

    grid = write_grid(tmp_path, GRID.replace('"train.rounds" = 3',
                                             '"train.rounds" = 30\n"train.checkpoint_every" = 10\n"train.eval_every" = 10')
                      .replace('"aggregator.name" = ["mean", "median"]', '"aggregator.name" = ["median"]')
                      .replace('"attack.name" = ["sign_flip", "gaussian"]', '"attack.name" = ["sign_flip"]'))
    assert sweep(grid, tmp_path / "reference", "--threads", "1") == 0
    out = tmp_path / "killed"
    first = load_grid(grid).cells[0].name
    proc = subprocess.Popen([sys.executable, "-m", "brmtrl", "sweep", "--grid", str(grid), "--out", str(out),
                             "--quiet", "--threads", "1"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / first / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGSTOP)   # frozen just past its first checkpoint, then killed there: no
        os.killpg(proc.pid, signal.SIGKILL)   # sweep is fast enough to finish its cell in between
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / first / "results.json").exists() or \
        json.loads((out / first / "results.json").read_text())["final"]["rounds"] < 30
    assert sweep(grid, out, "--threads", "1") == 0
    assert numbers(out) == numbers(tmp_path / "reference")
    for cell in summary(out):
        hist = json.loads((out / cell / "results.json").read_text())["history"]
        ref = json.loads((tmp_path / "reference" / cell / "results.json").read_text())["history"]
        assert [h["honest_acc_mean"] for h in hist] == [h["honest_acc_mean"] for h in ref]
