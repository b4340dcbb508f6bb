"""Command line: ``brmtrl run --config FILE [--set KEY=VALUE ...] [--out DIR]``, ``--resume DIR``, ``keys``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .config import SCHEMA, ConfigError, load_config, parse_override, validate
from .data import DataError
from .flower.errors import FederationError as FlowerError

__all__ = ["main"]

CONFIG_FILE = "config.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brmtrl", description="Byzantine-resilient personalized federated learning")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a simulated federation")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="TOML configuration file")
    src.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (repeatable), e.g. --set train.rounds=5")
    run.add_argument("--out", metavar="DIR", help="output directory (default: runs/<config>-<time>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--engine", choices=("builtin", "flower"), default="builtin",
                     help="builtin: the in-process simulation; flower: Flower's simulation engine (Ray backend), "
                          "needs pip install 'brmtrl[flower]'")
    dep = sub.add_parser("deploy-local", help="run a real Flower federation here: a SuperLink and N SuperNodes "
                                              "as separate processes on 127.0.0.1")
    dep.add_argument("--config", metavar="FILE", required=True, help="TOML configuration file")
    dep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (repeatable)")
    dep.add_argument("--supernodes", type=int, default=4, metavar="N", help="SuperNodes to start (default 4); "
                     "the clients are split among them")
    dep.add_argument("--out", metavar="DIR", help="output directory (default: runs/<config>-deploy-<time>)")
    dep.add_argument("--tls", action="store_true", help="generate a CA and certificates; TLS on every connection")
    dep.add_argument("--auth", action="store_true", help="SuperNode authentication: each node's key is registered "
                                                         "with the SuperLink, unregistered nodes are refused")
    dep.add_argument("--timeout", type=float, default=24 * 3600.0, metavar="S", help="give up after S seconds")
    dep.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("keys", help="list every config key with its default and allowed values")
    return p


def _keys() -> int:
    for key, (default, constraint, help_) in SCHEMA.items():
        print(f"{key:32s} default {default!r:24s} {constraint.describe()} — {help_}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .engine import Simulation
    from .report import write_json, write_outputs

    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / CONFIG_FILE
        if not cfg_path.is_file():
            raise DataError(f"--resume {str(run_dir)!r}: {CONFIG_FILE} not found; is this a brmtrl run directory?")
        try:
            values = {k: v for k, v in json.loads(cfg_path.read_text()).items()}
        except json.JSONDecodeError as exc:
            raise DataError(f"{str(cfg_path)!r} is not valid JSON ({exc})") from None
        for text in args.overrides:
            key, value = parse_override(text)
            if key != "train.rounds":
                raise ConfigError(f"--set {text!r}: only train.rounds may change when resuming a run")
            values[key] = value
        cfg = validate(values, source=repr(str(cfg_path)))
        if args.out and Path(args.out) != run_dir:
            raise ConfigError("--out cannot differ from --resume DIR: a resumed run writes into its own directory")
    else:
        cfg = load_config(args.config, args.overrides)
        stem = Path(args.config).stem
        run_dir = Path(args.out) if args.out else Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.engine == "flower":
        if args.resume:
            raise ConfigError("--resume works with the built-in engine only; Flower runs start afresh")
        from .flower.simulation import run_flower_simulation

        write_json_dir(run_dir, cfg)
        results = run_flower_simulation(cfg, run_dir, progress=not args.quiet and sys.stderr.isatty())
        _print_summary(results, run_dir)
        return 0
    sim = Simulation(cfg, out_dir=run_dir, progress=not args.quiet and sys.stderr.isatty())
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.resume:
        sim.restore(run_dir)
        print(f"resuming {run_dir} at round {sim.start_round}", file=sys.stderr)
    else:
        write_json(run_dir / CONFIG_FILE, dict(cfg))
    results = sim.run()
    write_outputs(run_dir, results)
    _print_summary(results, run_dir)
    return 0


def write_json_dir(run_dir: Path, cfg: Any) -> None:
    from .report import write_json

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, dict(cfg))


def _print_summary(results: dict[str, Any], run_dir: Path) -> None:
    f = results["final"]
    acc = f["honest_acc_mean"]
    shown = f"honest accuracy {acc:.4f} (std {f['honest_acc_std']:.4f}, min {f['honest_acc_min']:.4f})" \
        if acc is not None else f"honest test loss {f['honest_loss_mean']:.4g}"
    extra = f", subspace distance {f['subspace_distance']:.4f}" if "subspace_distance" in f else ""
    print(f"{shown}{extra}; {len(f['byzantine_clients'])} Byzantine clients; "
          f"{results['timing']['per_round_s']:.3f} s/round; results in {run_dir}/")


def _deploy(args: argparse.Namespace) -> int:
    from .flower.deploy import deploy_local

    if args.supernodes < 1:
        raise ConfigError(f"--supernodes must be >= 1, got {args.supernodes}")
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-deploy-{time.strftime('%Y%m%d-%H%M%S')}"
    results = deploy_local(cfg, run_dir, supernodes=args.supernodes, tls=args.tls, auth=args.auth,
                           progress=not args.quiet and sys.stderr.isatty(), timeout=args.timeout)
    _print_summary(results, run_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="brmtrl: %(levelname)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "keys":
            return _keys()
        if args.command == "deploy-local":
            return _deploy(args)
        return _run(args)
    except (ConfigError, DataError, FlowerError) as exc:
        print(f"brmtrl: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `brmtrl keys | head`
        return 0
    except KeyboardInterrupt:
        print("brmtrl: interrupted; continue with `brmtrl run --resume DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
