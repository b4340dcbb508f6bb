"""Command line: ``brmtrl run --config FILE [--set KEY=VALUE ...] [--out DIR]``, ``--resume DIR``, ``sweep``,
``report``, ``keys``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import RESUMABLE_KEYS
from .config import SCHEMA, Config, ConfigError, load_config, parse_override, validate
from .data import DataError
from .flower.errors import FederationError as FlowerError
from .rundir import CONFIG_FILE, run_builtin, write_config

__all__ = ["main"]



def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brmtrl", description="Byzantine-resilient personalized federated learning")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a simulated federation")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="TOML configuration file")
    src.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint "
                                                     f"(--set may change {', '.join(RESUMABLE_KEYS)})")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (repeatable), e.g. --set train.rounds=5")
    run.add_argument("--out", metavar="DIR", help="output directory (default: a new runs/<config>-<time>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--engine", choices=("builtin", "flower"), default="builtin",
                     help="builtin: the in-process simulation; flower: Flower's simulation engine (Ray backend), "
                          "needs pip install 'brmtrl[flower]'")
    dep = sub.add_parser("deploy-local", help="run a real Flower federation here: a SuperLink and N SuperNodes "
                                              "as separate processes on 127.0.0.1")
    dep.add_argument("--config", metavar="FILE", help="TOML configuration file (not with --resume)")
    dep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (repeatable)")
    dep.add_argument("--supernodes", type=int, default=4, metavar="N", help="SuperNodes to start (default 4); "
                     "the clients are split among them")
    dep.add_argument("--out", metavar="DIR", help="output directory (default: runs/<config>-deploy-<time>)")
    dep.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint: a "
                     "new SuperLink and SuperNodes, the server from its last round, each node's clients from "
                     "their state-dir (the config is read from --out/config.json; --set may change the resumable keys)")
    dep.add_argument("--tls", action="store_true", help="generate a CA and certificates; TLS on every connection")
    dep.add_argument("--auth", action="store_true", help="SuperNode authentication: each node's key is registered "
                                                         "with the SuperLink, unregistered nodes are refused")
    dep.add_argument("--warm-clientapp", action="store_true", help="each SuperNode runs its ClientApp in one "
                     "long-lived worker (brmtrl.flower.warm_worker, Flower 1.42) instead of a fresh process per message: "
                     "no per-message import and data load, no isolation between messages")
    dep.add_argument("--timeout", type=float, default=24 * 3600.0, metavar="S", help="give up after S seconds")
    dep.add_argument("--quiet", action="store_true", help="no progress bar")
    fa = sub.add_parser("flower-app", help="write a Flower App directory and its run config for flwr run "
                                           "on a real multi-machine federation (docs/deployment.md)")
    fa.add_argument("--config", metavar="FILE", required=True, help="TOML configuration file")
    fa.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    fa.add_argument("--out", metavar="DIR", required=True, help="the app directory to write")
    fa.add_argument("--results", metavar="DIR", required=True,
                    help="where the ServerApp writes results.json (a path on the SuperLink's host)")
    fa.add_argument("--clients", type=int, default=0, metavar="N",
                    help="clients to wait for (default: dataset.num_clients)")
    fa.add_argument("--resume", action="store_true", help="the ServerApp continues the run in --results from its "
                    "checkpoint (after the SuperLink or the ServerApp died); the nodes keep their clients' heads in "
                    "their state-dir")
    keys = sub.add_parser("keygen", help="TLS certificates for a SuperLink, or a SuperNode's authentication key pair")
    keys.add_argument("what", choices=("tls", "node"))
    keys.add_argument("--out", metavar="DIR", required=True)
    keys.add_argument("--host", action="append", default=[], metavar="NAME",
                      help="tls: a host name or IP the SuperLink is reached at (repeatable; default 127.0.0.1, localhost)")
    keys.add_argument("--name", default="supernode", help="node: the key files' name")
    keys.add_argument("--days", type=int, default=365, metavar="N",
                      help="tls: days the CA and server certificate stay valid (default 365)")
    keys.add_argument("--ca-name", default="brmtrl federation CA", help="tls: the CA's common name")
    sw = sub.add_parser("sweep", help="run every cell of a grid of configurations (resumable, in parallel); "
                                      "see README 'Sweeps'")
    sw.add_argument("--grid", metavar="FILE", required=True, help="grid TOML file: config, [set], [grid], [[exclude]]")
    sw.add_argument("--out", metavar="DIR", required=True, help="sweep directory; run again to continue it")
    sw.add_argument("--workers", type=int, default=1, metavar="N", help="cells run at once, each in its own process")
    sw.add_argument("--threads", type=int, default=0, metavar="T",
                    help="torch threads per cell unless the grid sets 'threads' (default: cores // N; with --ray 1, "
                         "the CPUs each cell asks the cluster for)")
    sw.add_argument("--ray", metavar="ADDRESS", default="",
                    help="run the cells as tasks on the Ray cluster at ADDRESS (host:port, or 'auto') instead of "
                         "local workers; DIR must be on a file system every node sees (see README 'Sweeps')")
    sw.add_argument("--gpus-per-cell", type=float, default=0.0, metavar="G",
                    help="with --ray: GPUs each cell asks the cluster for (default 0)")
    sw.add_argument("--force", action="store_true", help="reuse a DIR made from a different grid "
                                                         "(cells whose configuration changed start again)")
    sw.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                    help="run only the cells whose grid KEY takes one of these values (repeatable: a cell must match "
                         "each); run again without it for the rest")
    sw.add_argument("--quiet", action="store_true", help="no progress bars or per-cell lines")
    sw.add_argument("--max-cells", type=int, default=0, help=argparse.SUPPRESS)  # debugging: stop after K cells
    rep = sub.add_parser("report", help="rebuild summary.csv, summary.md and the plots of a (finished or partial) sweep")
    rep.add_argument("dir", metavar="DIR", help="the sweep directory")
    sub.add_parser("keys", help="list every config key with its default and allowed values")
    return p


def _sweep(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import shlex

    from .sweep import run_sweep

    out = run_sweep(args.grid, args.out, workers=args.workers, threads=args.threads, force=args.force,
                    progress="off" if args.quiet else "bar" if sys.stderr.isatty() else "lines", max_cells=args.max_cells,
                    command="brmtrl " + " ".join(shlex.quote(a) for a in argv), ray=args.ray,
                    gpus=args.gpus_per_cell, only=args.only)
    failed = "".join(f"\n  {name}: {err}" for name, err in out.failed)
    print(f"{out.done} cells run, {out.skipped} already done, {len(out.failed)} failed, {out.pending} left; "
          f"{out.wall_s:.1f} s; summary in {args.out}/summary.md{failed}")
    return 1 if out.failed else 0


def _report(args: argparse.Namespace) -> int:
    from .sweep_report import write_report

    paths = write_report(Path(args.dir))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _keys() -> int:
    for key, (default, constraint, help_) in SCHEMA.items():
        print(f"{key:32s} default {default!r:24s} {constraint.describe()} — {help_}")
    return 0


def _resume_config(run_dir: Path, overrides: Sequence[str]) -> Config:
    """The configuration of the run in ``run_dir`` (its ``config.json``) with ``--set`` overrides of
    :data:`brmtrl.checkpoint.RESUMABLE_KEYS`; any other key may not change when resuming."""
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise DataError(f"--resume {str(run_dir)!r}: {CONFIG_FILE} not found; is this a brmtrl run directory?")
    try:
        values = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{str(cfg_path)!r} is not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise DataError(f"{str(cfg_path)!r} holds a JSON {type(values).__name__}, not a brmtrl configuration")
    for text in overrides:
        key, value = parse_override(text)
        if key not in RESUMABLE_KEYS:
            raise ConfigError(f"--set {text!r}: only {', '.join(RESUMABLE_KEYS)} may change when resuming a run")
        values[key] = value
    return validate(values, source=repr(str(cfg_path)))


def new_run_dir(parent: Path, name: str) -> Path:
    """Create and return a new directory ``parent/name``, or ``parent/name-2``, ``-3``, ... when it is
    taken: runs started at the same instant (the default name has a one-second timestamp) never share
    a directory, since creating one that exists fails."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = parent / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ConfigError(f"no free run directory named {name}-N in {str(parent)!r}; pass --out DIR")


def _default_run_dir(config: str, tag: str = "") -> Path:
    """A new ``runs/<config>[-<tag>]-<YYYYmmdd-HHMMSS>[-N]`` directory (:func:`new_run_dir`)."""
    parts = [Path(config).stem, *([tag] if tag else []), time.strftime("%Y%m%d-%H%M%S")]
    return new_run_dir(Path("runs"), "-".join(parts))


def _remove_if_empty(folder: Path) -> None:
    """Give back a run directory that a failed start left empty."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _run(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        cfg = _resume_config(run_dir, args.overrides)
        if args.out and Path(args.out) != run_dir:
            raise ConfigError("--out cannot differ from --resume DIR: a resumed run writes into its own directory")
        if args.engine == "flower":
            raise ConfigError("--resume works with the built-in engine only; Flower runs start afresh")
        return _execute(args, cfg, run_dir)
    cfg = load_config(args.config, args.overrides)
    if args.out:
        return _execute(args, cfg, Path(args.out))
    run_dir = _default_run_dir(args.config)
    try:
        return _execute(args, cfg, run_dir)
    except BaseException:
        _remove_if_empty(run_dir)
        raise


def _execute(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    """Run ``cfg`` into ``run_dir`` (continuing its checkpoint with ``--resume``)."""
    progress = not args.quiet and sys.stderr.isatty()
    if args.engine == "flower":
        from .flower.simulation import run_flower_simulation

        write_config(run_dir, cfg)
        results = run_flower_simulation(cfg, run_dir, progress=progress)
        _print_summary(results, run_dir)
        return 0
    results = run_builtin(cfg, run_dir, progress=progress, resume=bool(args.resume), announce=True)
    _print_summary(results, run_dir)
    return 0


def _print_summary(results: dict[str, Any], run_dir: Path) -> None:
    f = results["final"]
    acc = f["honest_acc_mean"]
    shown = f"honest accuracy {acc:.4f} (std {f['honest_acc_std']:.4f}, min {f['honest_acc_min']:.4f})" \
        if acc is not None else f"honest test loss {f['honest_loss_mean']:.4g}"
    extra = f", subspace distance {f['subspace_distance']:.4f}" if "subspace_distance" in f else ""
    scored, honest = f.get("clients_scored"), f.get("honest_clients")
    if scored is not None and honest is not None and scored < honest:   # a federation that lost nodes
        extra += f", over only {scored} of {honest} honest clients (their nodes stopped answering: see notes)"
    rep = results.get("reputation")
    if rep:
        extra += f"; {len(rep['excluded'])} clients excluded by the server's reputation"
    print(f"{shown}{extra}; {len(f['byzantine_clients'])} Byzantine clients; "
          f"{results['timing']['per_round_s']:.3f} s/round; results in {run_dir}/")


def _flower_app(args: argparse.Namespace) -> int:
    from .flower.deploy import write_app
    from .flower.errors import check_real_attack

    cfg = load_config(args.config, args.overrides)
    check_real_attack(cfg, "flower")
    if cfg["attack.name"] != "none":
        print(f"note: attack.name = {cfg['attack.name']!r} is set; in a real federation only the clients whose "
              "node config says byzantine=true (or lists them in byzantine-ids) run it, the others are honest",
              file=sys.stderr)
    toml = write_app(Path(args.out), cfg, args.results, args.clients or cfg["dataset.num_clients"],
                     resume=args.resume)
    print(f"Flower App in {args.out}/; run it with: flwr run {args.out} <federation> --run-config {toml} --stream")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from .flower.deploy import make_ca, make_node_keys

    out = Path(args.out)
    if args.what == "tls":
        paths = make_ca(out, tuple(args.host) or ("127.0.0.1", "localhost"), days=args.days, ca_name=args.ca_name)
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    else:
        priv, pub = make_node_keys(out, args.name)
        print(f"private key: {priv} (stays on the node)\npublic key: {pub} (register it: flwr supernode register {pub})")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from .flower.deploy import deploy_local

    if args.supernodes < 1:
        raise ConfigError(f"--supernodes must be >= 1, got {args.supernodes}")
    if args.resume:
        if not args.out:
            raise ConfigError("deploy-local --resume needs --out DIR, the run to continue")
        run_dir = Path(args.out)
        cfg = _resume_config(run_dir, args.overrides)
    else:
        if not args.config:
            raise ConfigError("deploy-local needs --config FILE (or --resume with --out DIR)")
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.out) if args.out else _default_run_dir(args.config, "deploy")
    results = deploy_local(cfg, run_dir, supernodes=args.supernodes, tls=args.tls, auth=args.auth,
                           warm=args.warm_clientapp,
                           progress=not args.quiet and sys.stderr.isatty(), timeout=args.timeout, resume=args.resume)
    _print_summary(results, run_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="brmtrl: %(levelname)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "keys":
            return _keys()
        if args.command == "sweep":
            return _sweep(args, argv)
        if args.command == "report":
            return _report(args)
        if args.command == "deploy-local":
            return _deploy(args)
        if args.command == "flower-app":
            return _flower_app(args)
        if args.command == "keygen":
            return _keygen(args)
        return _run(args)
    except (ConfigError, DataError, FlowerError) as exc:
        print(f"brmtrl: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `brmtrl keys | head`
        return 0
    except KeyboardInterrupt:
        hint = {"deploy-local": "every Flower process it started was stopped",
                "sweep": "run the same brmtrl sweep command again to continue"}.get(
                    args.command, "continue with `brmtrl run --resume DIR`")
        print(f"brmtrl: interrupted; {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
