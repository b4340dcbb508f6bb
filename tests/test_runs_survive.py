"""Checkpoints, resume after SIGKILL, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from brmtrl.checkpoint import load_checkpoint
from brmtrl.cli import main

from .conftest import CONFIGS

ARGS = ["--set", "train.rounds=150", "--set", "train.checkpoint_every=5", "--set", "train.eval_every=10",
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
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    stopped_at = load_checkpoint(killed)["round"]
    assert 0 < stopped_at < 150
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
