"""Checkpoints, resume after SIGKILL, determinism."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from brmtrl import checkpoint as ckpt
from brmtrl.checkpoint import (
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
    temp_path,
)
from brmtrl.cli import main
from brmtrl.report import write_json, write_metrics_csv

from .conftest import CONFIGS

ARGS = ["--set", "train.rounds=20", "--set", "train.checkpoint_every=5", "--set", "train.eval_every=10",
        "--set", "dataset.num_clients=20", "--set", "device=cpu", "--quiet"]


def comparable(results: dict) -> dict:
    """results.json without wall-clock figures."""
    out = {k: v for k, v in results.items() if k != "timing"}
    out["history"] = [{k: v for k, v in h.items() if not k.endswith("_s")} for h in results["history"]]
    return out


def cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "brmtrl", "run", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_and_resume_gives_the_uninterrupted_results(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = cli("--config", str(CONFIGS / "quick.toml"), *ARGS, "--out", str(full))
    proc = cli("--config", str(CONFIGS / "quick.toml"), *ARGS, "--out", str(killed))
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)     # frozen where it is (a round or two past its first checkpoint) ...
    proc.send_signal(signal.SIGKILL)     # ... and killed there: no run is fast enough to end first
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    stopped_at = load_checkpoint(killed)["round"]
    assert 0 < stopped_at < 20
    resumed = cli("--resume", str(killed), "--quiet")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    a = json.loads((full / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert comparable(a) == comparable(b)
    assert a["final"]["honest_acc_mean"] == b["final"]["honest_acc_mean"]


def test_same_seed_same_results_different_seed_different(tmp_path):
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main(["run", "--config", str(CONFIGS / "quick.toml"), "--set", "train.rounds=10",
                     "--set", f"seed={seed}", "--set", "device=cpu", "--out", str(tmp_path / name), "--quiet"]) == 0
        outs.append(comparable(json.loads((tmp_path / name / "results.json").read_text())))
    assert outs[0] == outs[1]
    assert outs[0]["history"] != outs[2]["history"]
    assert outs[0]["final"]["byzantine_clients"] != outs[2]["final"]["byzantine_clients"]


def test_checkpoint_is_atomic_and_complete(tmp_path):
    assert main(["run", "--config", str(CONFIGS / "quick.toml"), "--set", "train.rounds=4",
                 "--set", "train.checkpoint_every=2", "--out", str(tmp_path), "--quiet"]) == 0
    st = load_checkpoint(tmp_path)
    assert st["round"] == 4 and st["private"].shape[0] == 50 and torch.isfinite(st["shared"]).all()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resume_errors_are_clean(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    (tmp_path / "config.json").write_text(json.dumps({"train.rounds": 3}))
    assert main(["run", "--resume", str(tmp_path)]) == 2
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.json not found" in err and "checkpoint.pt is missing" in err and "cannot be read" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- issue 10: resuming the right run, safely
SMALL = ["--set", "dataset.num_clients=10", "--set", "dataset.samples_per_client=20", "--set", "device=cpu",
         "--set", "train.eval_every=1", "--set", "train.checkpoint_every=2", "--quiet"]


def small_run(out: Path, rounds: int = 2, *extra: str) -> int:
    """A seconds-long run of quick.toml into ``out``, checkpointing every 2 rounds."""
    return main(["run", "--config", str(CONFIGS / "quick.toml"), "--set", f"train.rounds={rounds}", *SMALL,
                 *extra, "--out", str(out)])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("brmtrl: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_resume_with_more_rounds_rewrites_config_json(tmp_path):
    assert small_run(tmp_path, 2) == 0
    assert main(["run", "--resume", str(tmp_path), "--set", "train.rounds=4", "--quiet"]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["train.rounds"] == 4
    res = json.loads((tmp_path / "results.json").read_text())
    assert [h["round"] for h in res["history"]] == [1, 2, 3, 4] and res["config"]["train"]["rounds"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_edited_config_is_refused_naming_the_differing_keys(tmp_path, capsys):
    assert small_run(tmp_path, 2) == 0
    cfg_file = tmp_path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    edited = dict(cfg, **{"train.lr": 0.5, "dataset.noise": 0.3})
    cfg_file.write_text(json.dumps(edited))
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path), "--set", "train.rounds=4", "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "different configuration" in err and "train.lr" in err and "dataset.noise" in err
    assert "train.momentum" not in err
    assert json.loads(cfg_file.read_text()) == edited  # a refused resume changes nothing
    assert load_checkpoint(tmp_path)["round"] == 2
    # where and how long a run is computed are not the experiment: they may change
    cfg_file.write_text(json.dumps(dict(cfg, threads=1)))
    assert main(["run", "--resume", str(tmp_path), "--set", "train.rounds=3", "--set", "device=cpu",
                 "--quiet"]) == 0
    assert json.loads(cfg_file.read_text())["threads"] == 1
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path), "--set", "train.lr=0.1"]) == 2
    assert "only train.rounds, device, threads may change" in one_line_error(capsys)


def test_checkpoint_that_does_not_fit_the_model_is_refused(tmp_path, capsys):
    assert small_run(tmp_path, 2) == 0
    st = load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, dict(st, shared=st["shared"][:-3]))
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "does not fit" in err and "shared vector" in err
    # a checkpoint of an earlier version (no fingerprint) of another model size: the shapes tell
    old = {k: v for k, v in st.items() if k not in ("config", "fingerprint")}
    save_checkpoint(tmp_path, dict(old, private=torch.zeros(st["private"].shape[0], st["private"].shape[1] + 1)))
    assert main(["run", "--resume", str(tmp_path), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "does not fit" in err and "private" in err


class Payload:
    """A pickle that, when unpickled, creates the file ``marker`` (a stand-in for running any code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_malicious_checkpoint_is_refused_and_not_run(tmp_path, capsys, fmt):
    assert small_run(tmp_path, 2) == 0
    marker = tmp_path / "pwned"
    evil = dict(load_checkpoint(tmp_path), history=[Payload(marker)])
    with open(tmp_path / "checkpoint.pt", "wb") as fh:
        torch.save(evil, fh) if fmt == "torch.save" else pickle.dump(evil, fh)
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "cannot be read" in err and "never runs code" in err
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    with open(tmp_path / "checkpoint.pt", "rb") as fh:
        torch.load(fh, weights_only=False) if fmt == "torch.save" else pickle.load(fh)
    assert marker.exists()


def test_engine_state_loads_with_weights_only(tmp_path):
    assert small_run(tmp_path, 2) == 0
    st = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert st["round"] == 2 and len(st["fingerprint"]) == 64 and st["config"]["train.lr"] == 0.05
    assert "train.rounds" not in st["config"] and "device" not in st["config"]
    # values of other types a metric might carry are saved as what weights_only reads back
    save_checkpoint(tmp_path, dict(st, history=[{"acc": np.float64(0.5), "n": np.int64(3), "pair": (1, 2),
                                                  "v": np.arange(3)}]))
    h = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["history"][0]
    assert h["acc"] == 0.5 and type(h["acc"]) is float and h["n"] == 3 and h["pair"] == [1, 2]
    assert h["v"].tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match="history"):
        save_checkpoint(tmp_path, dict(st, history=[object()]))


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):  # the second checkpoint write fails after its data is written, before the rename
        if Path(dst).name == "checkpoint.pt" and (Path(dst)).exists():
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert small_run(tmp_path, 4) == 2
    err = one_line_error(capsys)
    assert "cannot write checkpoint" in err and "No space left" in err
    monkeypatch.undo()
    st = load_checkpoint(tmp_path)
    assert st["round"] == 2 and torch.isfinite(st["shared"]).all()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert main(["run", "--resume", str(tmp_path), "--quiet"]) == 0
    assert load_checkpoint(tmp_path)["round"] == 4


KILLED_WRITE = textwrap.dedent("""
    import os, signal, sys
    import torch
    from brmtrl.checkpoint import save_checkpoint
    state = {"round": 1, "shared": torch.ones(3), "private": torch.ones(2, 3), "history": [], "rejected": [],
             "elapsed": {}}
    save_checkpoint(sys.argv[1], state)

    def die(fd):  # killed after the new data is written, before it is synced and renamed
        os.kill(os.getpid(), signal.SIGKILL)

    os.fsync = die
    save_checkpoint(sys.argv[1], dict(state, round=2, shared=torch.zeros(3)))
""")


def test_killed_checkpoint_write_keeps_the_previous_one_and_its_temp_is_removed_later(tmp_path):
    p = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(tmp_path)], capture_output=True, text=True,
                       timeout=120, check=False, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == -signal.SIGKILL, p.stderr
    st = load_checkpoint(tmp_path)
    assert st["round"] == 1 and st["shared"].tolist() == [1.0, 1.0, 1.0]
    left = [q for q in tmp_path.iterdir() if q.name.startswith(".checkpoint.pt.") and q.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].stat().st_size > 0
    save_checkpoint(tmp_path, dict(st, round=3))
    assert load_checkpoint(tmp_path)["round"] == 3
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")]


def test_resume_removes_temps_of_killed_writes(tmp_path):
    assert small_run(tmp_path, 2) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    leftovers = [tmp_path / f".checkpoint.pt.{dead}.tmp", tmp_path / f".results.json.{dead}-0123abcd.tmp",
                 tmp_path / f".metrics.csv.{dead}-0123abcd.tmp", tmp_path / ".config.json.tmp"]
    for q in leftovers:
        q.write_bytes(b"half")
    assert main(["run", "--resume", str(tmp_path), "--set", "train.rounds=3", "--set", "train.checkpoint_every=0",
                 "--quiet"]) == 2  # checkpoint_every may not change; nothing is touched
    assert all(q.exists() for q in leftovers)
    assert main(["run", "--resume", str(tmp_path), "--set", "train.rounds=3", "--quiet"]) == 0
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")]


def test_remove_stale_temps_spares_live_writers_and_other_files(tmp_path):
    live = tmp_path / f".checkpoint.pt.{os.getppid()}-0123abcd.tmp"  # another process, still running
    own_stale = temp_path(tmp_path / "results.json")  # this process, no write in flight
    other = [tmp_path / ".notes.tmp", tmp_path / "data.tmp", tmp_path / ".x.12-zz.tmp"]
    for q in (live, own_stale, *other):
        q.write_text("x")
    with ckpt.atomic_file(tmp_path / "metrics.csv", "w") as fh:  # a write in flight is never removed
        fh.write("a\n")
        assert remove_stale_temps(tmp_path) == [own_stale]
    assert (tmp_path / "metrics.csv").read_text() == "a\n"
    assert live.exists() and all(q.exists() for q in other) and not own_stale.exists()


def test_metrics_csv_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    history = [{"round": r, "honest_acc_mean": r / 10} for r in range(1, 4)]
    write_metrics_csv(path, history)
    before = path.read_text()
    calls = []

    def failing_writerow(self, row):
        calls.append(row)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_writerow(self, row)

    real_writerow = csv.DictWriter.writerow
    monkeypatch.setattr(csv.DictWriter, "writerow", failing_writerow)
    with pytest.raises(OSError):
        write_metrics_csv(path, history + [{"round": 4, "honest_acc_mean": 0.4}])
    assert path.read_text() == before
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")]


def test_temp_names_are_unique_per_process_and_write(tmp_path, monkeypatch):
    seen: list[str] = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write_json(tmp_path / "results.json", {"a": 1})
    write_json(tmp_path / "results.json", {"a": 2})
    write_metrics_csv(tmp_path / "metrics.csv", [{"round": 1}])
    assert len(set(seen)) == 3 and all(f".{os.getpid()}-" in name for name in seen), seen
    # concurrent writers of one file never trip over each other's temporary file
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for j in range(20):
                write_json(tmp_path / "results.json", {"writer": i, "j": j})
        except OSError as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and json.loads((tmp_path / "results.json").read_text())["j"] == 19
