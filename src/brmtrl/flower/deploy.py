"""``brmtrl deploy-local``: a real Flower federation on this machine, as a multi-machine run would be.

One SuperLink and N SuperNodes run as separate OS processes on 127.0.0.1 (free ports), each SuperNode
told which clients it hosts through its node config (``partition-ids``); the run is submitted to the
SuperLink with ``flwr run`` exactly as on a real deployment, and the ServerApp writes
``results.json`` / ``metrics.csv`` / ``accuracy.png`` into the output directory. ``tls`` generates a
CA and a certificate for the run; ``auth`` enables SuperNode authentication and registers each
node's public key with ``flwr supernode register`` (an unregistered node is refused). Every process
is started in its own process group and stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from .errors import DeployError

__all__ = ["DeployError", "LocalFederation", "deploy_local", "make_ca", "make_node_keys", "write_app"]

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "brmtrlapp"
version = "1.0.0"
description = "BR-MTRL on Flower: the apps live in the installed brmtrl package"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "brmtrl"

[tool.flwr.app.components]
serverapp = "brmtrl.flower.server_app:app"
clientapp = "brmtrl.flower.client_app:app"

[tool.flwr.app.config]
brmtrl-config = ""
brmtrl-out = ""
brmtrl-clients = 0
brmtrl-resume = false
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    """A Flower command from the running interpreter's environment."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} not found: install the Flower extra with pip install 'brmtrl[flower]'")
    return found


def make_ca(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), *, days: int = 365,
            ca_name: str = "brmtrl federation CA") -> dict[str, Path]:
    """A self-signed CA named ``ca_name`` and a server certificate signed by it for ``hosts`` (PEM files in
    ``folder``), both valid for ``days`` days from now (``brmtrl keygen tls --days``; deploy-local makes
    2-day ones for its throw-away federations)."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise DeployError(f"certificate validity must be a whole number of days >= 1, got {days!r}")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    os.chmod(paths["key"], 0o600)
    return paths


def make_node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC key pair for SuperNode authentication, in OpenSSH format (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = folder / f"{name}", folder / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    os.chmod(priv, 0o600)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return priv, pub


@dataclass
class LocalFederation:
    """The processes of a local deployment; :meth:`stop` ends every one of them (process groups)."""

    work: Path
    tls: bool = False
    auth: bool = False
    port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    certs: dict[str, Path] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, FLWR_HOME=str(self.work / "flwr-home"), PYTHONUNBUFFERED="1")
        # Flower starts helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name: find ours first
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env(), cwd=self.work, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _security(self) -> list[str]:
        return ["--insecure"] if not self.tls else []

    def start_superlink(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = [_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                "--health-server-address", f"127.0.0.1:{free_port()}"]
        if self.tls:
            self.certs = make_ca(self.work / "certs", days=2, ca_name="brmtrl deploy-local CA")   # throw-away
            args += ["--ssl-ca-certfile", str(self.certs["ca"]), "--ssl-certfile", str(self.certs["cert"]),
                     "--ssl-keyfile", str(self.certs["key"])]
        if self.auth:
            args.append("--enable-supernode-auth")
        self._spawn("superlink", args + self._security())
        self._write_flwr_config()
        self._wait_listening(self.port, "superlink")

    def _write_flwr_config(self) -> None:
        home = self.work / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", 'default = "local"', "", "[superlink.local]", f'address = "{self.address}"']
        lines.append(f'root-certificates = "{self.certs["ca"]}"' if self.tls else "insecure = true")
        (home / "config.toml").write_text("\n".join(lines) + "\n")

    def _wait_listening(self, port: int, name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise DeployError(f"{name} exited with code {self.procs[name].returncode}; see {self.work / (name + '.log')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise DeployError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")

    def register(self, public_key: Path) -> None:
        """Register a SuperNode's public key with the SuperLink, as Flower's CLI does."""
        out = subprocess.run([_bin("flwr"), "supernode", "register", str(public_key), "local"], env=self.env(),
                             cwd=self.work, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise DeployError(f"flwr supernode register failed: {out.stdout.strip()} {out.stderr.strip()}")

    def start_supernode(self, name: str, node_config: str, *, key: Path | None = None,
                        warm: bool = False) -> subprocess.Popen:
        """Start a SuperNode; ``warm``: with ``--isolation process`` and brmtrl's long-lived ClientApp worker
        (:mod:`brmtrl.flower.warm_worker`, log ``<name>-worker.log``) in place of Flower's SuperExec."""
        runtime = free_port()
        args = [_bin("flower-supernode"), "--superlink", self.address, "--port", str(runtime),
                "--node-config", node_config, "--max-retries", "0"]
        if self.tls:
            args += ["--root-certificates", str(self.certs["ca"])]
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        if warm:
            args += ["--isolation", "process"]
        proc = self._spawn(name, args + self._security())
        if warm:   # the SuperNode's Runtime API is local and plain, as for Flower's own SuperExec
            self._spawn(f"{name}-worker", [sys.executable, "-m", "brmtrl.flower.warm_worker",
                                           "--runtime-api-address", f"127.0.0.1:{runtime}", "--insecure"])
        return proc

    def run_app(self, cfg: Config, out_dir: Path, clients: int, timeout: float, *,
                resume: bool = False) -> subprocess.CompletedProcess:
        """Submit the brmtrl Flower App for ``cfg`` to the SuperLink and wait for the run to finish
        (``resume``: the ServerApp continues from the checkpoint in ``out_dir``)."""
        app = self.work / "app"
        toml = write_app(app, cfg, str(out_dir), clients, resume=resume)
        cmd = [_bin("flwr"), "run", str(app), "local", "--run-config", str(toml), "--stream"]
        with open(self.work / "flwr-run.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env(),
                                    cwd=self.work, start_new_session=True)
            self.procs["flwr-run"] = proc
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DeployError(f"the run did not finish within {timeout:.0f} s; see {self.work}/*.log") from None
        return subprocess.CompletedProcess(cmd, rc)

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process this federation started and every process they started in turn (Flower's
        SuperExec runs in a session of its own and keeps pre-started workers): freeze the whole family
        (SIGSTOP, so that nothing new is spawned while it is listed), SIGKILL it, then wait until none
        of it is left (at most ``grace`` seconds)."""
        known: set[int] = set()
        for _ in range(3):
            family = _family([p.pid for p in self.procs.values()] + sorted(known))
            _signal_all(family - known, signal.SIGSTOP)
            if family <= known:
                break
            known |= family
        _signal_all(known, signal.SIGKILL)
        _signal_all(known, signal.SIGCONT)
        for proc in self.procs.values():
            proc.wait()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in known):
            time.sleep(0.05)

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line) of every process we can see (Linux /proc)."""
    out: dict[int, tuple[int, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            out[int(entry.name)] = (ppid, [c.decode(errors="replace") for c in cmd if c])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _family(roots: list[int]) -> set[int]:
    """``roots`` and every descendant, counting a process started with ``--parent-pid P`` as P's child."""
    procs = _processes()
    family = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, (ppid, cmd) in procs.items():
            if pid in family:
                continue
            watched = [int(cmd[i + 1]) for i, c in enumerate(cmd[:-1]) if c == "--parent-pid" and cmd[i + 1].isdigit()]
            if ppid in family or any(w in family for w in watched):
                family.add(pid)
                grew = True
    return family


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def write_app(folder: Path, cfg: Config, out_dir: str, clients: int, *, resume: bool = False) -> Path:
    """A Flower App directory for ``flwr run`` (its components live in the installed brmtrl) and the
    run config that carries ``cfg``; returns the run-config file."""
    from .node import config_to_json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(APP_PYPROJECT)
    run_config = {"brmtrl-config": config_to_json(cfg), "brmtrl-out": out_dir, "brmtrl-clients": clients,
                  "brmtrl-resume": resume}
    toml = folder / "run-config.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in run_config.items()))
    return toml


def split_clients(num_clients: int, supernodes: int) -> list[list[int]]:
    """Contiguous ranges of clients, one per SuperNode."""
    return [list(map(int, part)) for part in np.array_split(np.arange(num_clients), supernodes) if len(part)]


def node_config(clients: list[int], extra: dict[str, Any] | None = None) -> str:
    items = {"partition-ids": f"{clients[0]}-{clients[-1]}", **(extra or {})}
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower()}" for k, v in items.items())


def byzantine_extra(clients: list[int], byzantine: list[int]) -> dict[str, Any]:
    """The node config that names the Byzantine clients among ``clients`` (``byzantine=false`` if none)."""
    mine = [c for c in clients if c in set(byzantine)]
    return {"byzantine-ids": ",".join(map(str, mine))} if mine else {"byzantine": False}


def deploy_local(cfg: Config, out_dir: str | Path, *, supernodes: int = 4, tls: bool = False, auth: bool = False,
                 progress: bool = False, timeout: float = 3600.0, resume: bool = False,
                 warm: bool = False) -> dict[str, Any]:
    """Run ``cfg`` on a SuperLink and ``supernodes`` SuperNodes started here; return results.json.
    ``warm``: each SuperNode's ClientApp runs in one long-lived worker (:mod:`brmtrl.flower.warm_worker`,
    Flower 1.42) instead of a fresh process per message.

    Each SuperNode keeps its clients' private parts in ``<out_dir>/deploy/state/supernode-<k>`` (node
    config ``state-dir``) and the ServerApp checkpoints into ``out_dir`` after every round; with ``resume``
    a run that was killed continues from there (a fresh run clears both first)."""
    from ..data import load_data
    from ..federation import Federation
    from .errors import check_real_attack

    check_real_attack(cfg, "flower")
    if warm:
        from .warm_worker import WarmWorkerError, check_available

        try:
            check_available()
        except WarmWorkerError as exc:
            raise DeployError(f"--warm-clientapp: {exc}") from None
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n = load_data(cfg).num_clients
    fed = LocalFederation(out / "deploy", tls=tls, auth=auth)
    state = out / "deploy" / "state"
    if not resume:
        shutil.rmtree(state, ignore_errors=True)
        (out / "checkpoint.pt").unlink(missing_ok=True)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM,)}

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        with fed:
            fed.start_superlink()
            byzantine = list(Federation.from_config(cfg, n).byzantine)   # what the seed picks (a test bench)
            for k, clients in enumerate(split_clients(n, supernodes)):
                key = None
                if auth:
                    key, pub = make_node_keys(fed.work / "keys", f"supernode-{k}")
                    fed.register(pub)
                extra = {**byzantine_extra(clients, byzantine), "state-dir": str(state / f"supernode-{k}")}
                if cfg["dataset.root"]:     # the nodes' ClientApps run elsewhere: a relative root is resolved here
                    extra["dataset-root"] = str(Path(cfg["dataset.root"]).resolve())
                fed.start_supernode(f"supernode-{k}", node_config(clients, extra), key=key, warm=warm)
            for stale in ("results.json", "error.txt"):
                (out / stale).unlink(missing_ok=True)
            bar = _ProgressWatcher(out, cfg["train.rounds"]) if progress else None
            try:
                done = fed.run_app(cfg, out, n, timeout, resume=resume)
            finally:
                if bar is not None:
                    bar.close()
            if (out / "error.txt").is_file():
                raise DeployError(f"the ServerApp failed: {(out / 'error.txt').read_text().strip()}")
            if done.returncode != 0 or not (out / "results.json").is_file():
                raise DeployError(f"flwr run ended with code {done.returncode} without results; see {fed.work}/*.log")
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return json.loads((out / "results.json").read_text())


class _ProgressWatcher:
    """A progress bar fed by the ServerApp's ``progress.json`` (it runs in the SuperLink's process)."""

    def __init__(self, out: Path, total: int):
        import threading

        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="rounds", unit="round", dynamic_ncols=True)
        self.path = out / "progress.json"
        self.path.unlink(missing_ok=True)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                state = json.loads(self.path.read_text())
            except (OSError, ValueError):
                continue
            self.bar.n = int(state.get("round", 0))
            if state.get("honest_acc_mean") is not None:
                self.bar.set_postfix(acc=f"{state['honest_acc_mean']:.4f}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.bar.close()
