"""brmtrl deploy-local: a SuperLink and SuperNodes as real processes on 127.0.0.1.

Each test starts its own federation on free ports and stops every process it started, also when the
test fails (the federation is a context manager; deploy_local stops it in a finally block)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from brmtrl.config import load_config
from brmtrl.engine import Simulation

from .conftest import CONFIGS

pytest.importorskip("flwr")

from brmtrl.errors import DeployError  # noqa: E402
from brmtrl.flower.deploy import (LocalFederation, _alive, _processes, deploy_local, make_node_keys,  # noqa: E402
                                  node_config, split_clients)

#: the federations below run with the warm ClientApp worker where Flower has it (1.42; a round takes a third
#: of the time); one node of the TLS federation keeps Flower's default, a process per message (each imports
#: torch and brmtrl: four such SuperNodes for a run took 83 s of CPU)
WARM = tuple(int(v) for v in __import__("flwr").__version__.split(".")[:2]) >= (1, 42)
WARM_FLAG = ["--warm-clientapp"] if WARM else []


def small(*overrides: str):
    return load_config(CONFIGS / "quick.toml", ["device=cpu", "threads=1", "dataset.num_clients=8",
                                                "train.rounds=2", *overrides])


def flower_processes_of(work: Path) -> list[int]:
    """Processes whose environment points at this federation's FLWR_HOME (everything it started)."""
    home = f"FLWR_HOME={work / 'flwr-home'}".encode()
    out = []
    for pid in _processes():
        try:
            if home in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") and _alive(pid):
                out.append(pid)
        except OSError:
            continue
    return out


def wait_for_round(out: Path, round_: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Until the run in ``out`` has finished round ``round_`` (its progress.json), ``timeout`` seconds pass or
    ``proc`` (the process running it, if any) ends."""
    deadline = time.time() + timeout
    while time.time() < deadline and (proc is None or proc.poll() is None):
        try:
            if json.loads((out / "progress.json").read_text())["round"] >= round_:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)


@pytest.mark.slow(seconds=85)
def test_tls_and_authentication_refuse_a_stranger_and_a_node_keeps_two_experiments_apart(tmp_path):
    """One federation over TLS with SuperNode authentication (each federation costs the suite a minute):
    a stranger (an unregistered key) is refused; the registered nodes serve a run that ends as the
    built-in engine's, site-b with Flower's default isolation (a flwr-clientapp process per message, each
    importing torch and brmtrl) and site-a on the warm ClientApp worker where Flower has it (--isolation
    process and one long-lived brmtrl worker, no process per message); then a second experiment
    finds site-a's state-dir holding the first one's heads: site-a refuses to train with them, the reason,
    naming the directory and the node, reaches the operator (the server's log, error.txt and status.json of
    the failed run; all clients must answer there), and the heads are left alone."""
    groups = split_clients(8, 2)
    state = tmp_path / "state-a"
    honest = ("attack.name=none", "attack.byzantine_fraction=0.0")
    first = small("train.rounds=2", *honest)
    second = small("seed=1", "train.rounds=1", "train.participation=1.0", *honest, "flower.min_clients=8",
                   "flower.round_timeout=60")
    fed = LocalFederation(tmp_path / "fed", tls=True, auth=True)
    with fed:
        fed.start_superlink()
        assert (fed.work / "certs" / "ca.crt").is_file()
        keys = {}
        for name in ("site-a", "site-b"):
            keys[name], pub = make_node_keys(fed.work / "keys", name)
            fed.register(pub)
        stranger, _ = make_node_keys(fed.work / "keys", "stranger")
        bad = fed.start_supernode("stranger", node_config(groups[1]), key=stranger)
        fed.start_supernode("site-a", node_config(groups[0], {"byzantine": False, "state-dir": str(state),
                                                              "name": "site-a"}), key=keys["site-a"], warm=WARM)
        fed.start_supernode("site-b", node_config(groups[1], {"byzantine": False}), key=keys["site-b"])
        assert bad.wait(timeout=60) != 0  # refused: it exits
        assert "Failed to activate SuperNode" in (fed.work / "stranger.log").read_text()
        assert fed.run_app(first, tmp_path / "first", 8, 300).returncode == 0, \
            (fed.work / "flwr-run.log").read_text()[-2000:]
        heads = {p.name: p.read_bytes() for p in state.iterdir()}
        assert heads                                                               # site-a kept its heads
        fed.run_app(second, tmp_path / "second", 8, 300)
        assert all(fed.procs[name].poll() is None for name in ("site-a", "site-b"))
    res, ref = json.loads((tmp_path / "first" / "results.json").read_text()), Simulation(first).run()
    assert res["engine"] == "flower"
    assert res["final"]["client_scores"] == ref["final"]["client_scores"]
    assert [h["f_assumed"] for h in res["history"]] == [h["f_assumed"] for h in ref["history"]]
    assert res["history"][-1]["f_assumed"] > 0   # declared, although no client of this run attacks
    if WARM:
        assert "flwr-clientapp" not in (fed.work / "site-a.log").read_text()   # no process per message
        assert (fed.work / "site-a-worker.log").is_file()
    assert not (fed.work / "site-b-worker.log").exists()                       # Flower's default isolation
    out = tmp_path / "second"
    error = (out / "error.txt").read_text()
    assert "only 4 clients answered" in error and "node site-a" in error
    held = re.search(rf"'state-dir' = {re.escape(repr(str(state)))} holds client (\d+)'s state of another experiment", error)
    assert held and int(held.group(1)) in groups[0], error
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    assert not (out / "results.json").exists()
    assert {p.name: p.read_bytes() for p in state.iterdir()} == heads          # nothing overwritten
    assert flower_processes_of(fed.work) == []
    if not WARM:
        with pytest.raises(DeployError, match="needs Flower 1.42"):
            deploy_local(first, tmp_path / "warm", supernodes=2, timeout=300, warm=True)


@pytest.mark.slow(seconds=107)
def test_a_killed_supernode_a_garbage_reply_and_a_restarted_node_do_not_stop_the_run(tmp_path):
    """Three SuperNodes of 3 clients each (one federation for three faults: each costs the suite a
    minute or more). One replies with NaN updates: they are rejected and, after 3 rounds, the server's
    reputation excludes their senders. One is SIGKILLed after round 1 and started again with the same
    state-dir: the run goes on with the others meanwhile and lists the short round(s), only for the lost
    clients; then the server sees a new node hosting them and moves them to it, and they train on with
    their heads (read back from the state-dir) and are all scored at the end."""
    cfg = small("dataset.num_clients=9", "train.rounds=4", "train.participation=1.0", "train.eval_every=1",
                "attack.name=none", "attack.byzantine_fraction=0.0", "flower.round_timeout=45",
                "flower.min_clients=3", "aggregator.name=median")
    out = tmp_path / "run"
    groups = split_clients(9, 3)
    extra: list[dict | None] = [None, {"fault": "nan"}, {"byzantine": False, "state-dir": str(tmp_path / "state-2")}]
    fed = LocalFederation(out / "deploy")
    with fed:
        fed.start_superlink()
        for k, clients in enumerate(groups):
            fed.start_supernode(f"supernode-{k}", node_config(clients, extra[k]), warm=WARM)
        done: dict = {}
        runner = threading.Thread(target=lambda: done.update(rc=fed.run_app(cfg, out, 9, 400).returncode))
        runner.start()
        wait_for_round(out, 1, 200)   # kill node 2 once round 1 is over, and start it again
        os.killpg(fed.procs["supernode-2"].pid, signal.SIGKILL)
        fed.procs["supernode-2"].wait(timeout=30)
        fed.start_supernode("supernode-2-again", node_config(groups[2], extra[2]), warm=WARM)
        runner.join(timeout=380)
        assert done.get("rc") == 0, (out / "deploy" / "flwr-run.log").read_text()[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert [h["round"] for h in res["history"]] == [1, 2, 3, 4]
    killed = set(groups[2])
    short = res["short_rounds"]
    assert short and all(set(e["no_reply"]) | set(e["unreachable"]) <= killed for e in short)
    assert any(set(e["no_reply"]) | set(e["unreachable"]) == killed for e in short)
    assert len(short) <= 2 and 4 not in [e["round"] for e in short]   # only the round(s) of the outage
    assert any(f"clients {groups[2]} came back" in note for note in res["notes"])
    assert {e["client"] for e in res["rejected_updates"]} == set(groups[1])  # the NaN node, every round
    reasons = [e["reason"] for e in res["rejected_updates"]]
    assert all("non-finite" in r or "excluded by reputation" in r for r in reasons)
    assert sum("non-finite" in r for r in reasons) == 3 * 3   # rounds 1-3; then excluded
    assert {e["client"] for e in res["reputation"]["excluded"]} == set(groups[1])
    assert res["history"][-1]["updates_accepted"] == 6   # 9 clients - 3 NaN; the restarted node's are back
    assert res["history"][-1]["clients_scored"] == 9      # everyone is scored at the end
    state = torch.load(tmp_path / "state-2" / f"client-{groups[2][0]}.pt", weights_only=True)
    assert max(state["rounds"]) == 4                      # it trained to the end, from its state-dir
    assert flower_processes_of(out / "deploy") == []


@pytest.mark.slow(seconds=70)
def test_a_federation_killed_mid_run_resumes_and_ends_as_an_uninterrupted_run(tmp_path):
    """SIGKILL every process of a deploy-local run (ServerApp, SuperLink, the SuperNode and its ClientApp
    worker; one node, as each costs CPU and the TLS test checks that two end as the built-in engine) after a
    few rounds, then `deploy-local --resume`: a new federation; the server continues from its checkpoint,
    the node's clients from their state-dir, and the run ends with the built-in engine's numbers and
    files."""
    from brmtrl.cli import main

    sets = ["device=cpu", "threads=1", "dataset.num_clients=8", "train.rounds=4", "train.eval_every=1"]
    cfg = load_config(CONFIGS / "quick.toml", sets)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "brmtrl", "deploy-local", "--config", str(CONFIGS / "quick.toml"),
           *[a for kv in sets for a in ("--set", kv)], "--supernodes", "1", "--out", str(out), "--quiet", *WARM_FLAG]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_round(out, 2, 240, proc)
    finally:   # the power goes: every process at once, no clean-up
        for pid in [proc.pid, *flower_processes_of(out / "deploy")]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    killed_at = json.loads((out / "progress.json").read_text())["round"]
    assert 2 <= killed_at < 4 and not (out / "results.json").exists()
    assert sorted(p.name for p in (out / "deploy" / "state").iterdir()) == ["supernode-0"]
    assert main(["deploy-local", "--resume", "--out", str(out), "--supernodes", "1", "--quiet", *WARM_FLAG]) == 0
    res = json.loads((out / "results.json").read_text())
    ref = Simulation(cfg).run()
    assert res["engine"] == "flower"
    assert [h["round"] for h in res["history"]] == [1, 2, 3, 4]
    assert [h["honest_acc_mean"] for h in res["history"]] == pytest.approx(
        [h["honest_acc_mean"] for h in ref["history"]], abs=1e-3)
    assert res["final"]["honest_acc_mean"] == pytest.approx(ref["final"]["honest_acc_mean"], abs=1e-3)
    assert res["final"]["byzantine_clients"] == ref["final"]["byzantine_clients"]   # byzantine-ids from the seed
    assert [h["f_assumed"] for h in res["history"]] == [h["f_assumed"] for h in ref["history"]]
    assert {p.name for p in out.iterdir()} >= {"results.json", "metrics.csv", "accuracy.png", "checkpoint.pt",
                                               "config.json", "status.json"}
    assert json.loads((out / "status.json").read_text()) == {"status": "finished"}
    logs = {p.name for p in (out / "deploy").glob("supernode-*.log")}
    assert logs >= {"supernode-0.log"}
    assert flower_processes_of(out / "deploy") == []


def _ctrl_c_as_in_a_terminal() -> None:
    """A job started in the background by a non-interactive shell (CI scripts, ``cmd &``) inherits SIGINT
    ignored, and Python then keeps it ignored; a terminal's foreground process has the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow(seconds=21)
def test_ctrl_c_stops_every_process(tmp_path):
    """Ctrl-C on `brmtrl deploy-local --tls --auth` (its CA and certificates made, each node's key registered)
    once the run is under way: every process it started stops."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "brmtrl", "deploy-local", "--config", str(CONFIGS / "quick.toml"),
                             "--set", "dataset.num_clients=8", "--set", "train.rounds=50", "--set", "device=cpu",
                             "--supernodes", "1", "--out", str(out), "--quiet", "--tls", "--auth", *WARM_FLAG], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)
    try:
        deadline = time.time() + 300   # under the suite's load, TLS and the nodes' key registrations come first
        while time.time() < deadline and not (out / "progress.json").is_file() and proc.poll() is None:
            time.sleep(0.2)
        assert (out / "progress.json").is_file(), proc.stderr.read() if proc.poll() is not None else "no progress"
        assert flower_processes_of(out / "deploy")  # the federation is running
        assert (out / "deploy" / "certs" / "ca.crt").is_file() and len(list((out / "deploy" / "keys").glob("*.pub"))) == 1
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = flower_processes_of(out / "deploy")
        for pid in left:  # never leave a federation running behind a failed test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not left, f"processes left running after Ctrl-C: {left}"
    assert proc.returncode == 130 and "interrupted" in err
    assert flower_processes_of(out / "deploy") == []


def test_an_omniscient_attack_is_refused_on_a_real_federation(tmp_path, capsys):
    from brmtrl.cli import main

    code = main(["deploy-local", "--config", str(CONFIGS / "quick.toml"), "--set", "attack.name=alie",
                 "--supernodes", "2", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'alie' reads the honest updates" in err and "simulation only" in err
    assert not (tmp_path / "run" / "deploy").exists()  # refused before anything started


def test_keygen_tls_makes_certificates_valid_for_the_days_asked(tmp_path, capsys):
    """A real federation's certificates must not expire mid-project: `brmtrl keygen tls` defaults to a year,
    --days and --ca-name set them; a bad --days is a one-line error."""
    import datetime

    from cryptography import x509

    from brmtrl.cli import main

    assert main(["keygen", "tls", "--out", str(tmp_path / "year"), "--host", "superlink.example.org"]) == 0
    assert main(["keygen", "tls", "--out", str(tmp_path / "month"), "--days", "30", "--ca-name", "Lab CA"]) == 0
    now = datetime.datetime.now(datetime.timezone.utc)
    for folder, days, ca_name in (("year", 365, "brmtrl federation CA"), ("month", 30, "Lab CA")):
        for name in ("ca.crt", "server.pem"):
            cert = x509.load_pem_x509_certificate((tmp_path / folder / name).read_bytes())
            left = cert.not_valid_after_utc - now
            assert datetime.timedelta(days=days - 1) < left <= datetime.timedelta(days=days), (folder, name)
            assert cert.issuer.rfc4514_string() == f"CN={ca_name}"
    capsys.readouterr()
    assert main(["keygen", "tls", "--out", str(tmp_path / "bad"), "--days", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "certificate validity must be a whole number of days >= 1" in err
