"""Command line: ``brmtrl run --config FILE [--set KEY=VALUE ...] [--out DIR]``, ``--resume DIR``, ``keys``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from .config import SCHEMA, ConfigError, load_config, parse_override, validate
from .data import DataError

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
    sim = Simulation(cfg, out_dir=run_dir, progress=not args.quiet and sys.stderr.isatty())
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.resume:
        sim.restore(run_dir)
        print(f"resuming {run_dir} at round {sim.start_round}", file=sys.stderr)
    else:
        write_json(run_dir / CONFIG_FILE, dict(cfg))
    results = sim.run()
    write_outputs(run_dir, results)
    f = results["final"]
    acc = f["honest_acc_mean"]
    shown = f"honest accuracy {acc:.4f} (std {f['honest_acc_std']:.4f}, min {f['honest_acc_min']:.4f})" \
        if acc is not None else f"honest test loss {f['honest_loss_mean']:.4g}"
    extra = f", subspace distance {f['subspace_distance']:.4f}" if "subspace_distance" in f else ""
    print(f"{shown}{extra}; {len(f['byzantine_clients'])} Byzantine clients; "
          f"{results['timing']['per_round_s']:.3f} s/round; results in {run_dir}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="brmtrl: %(levelname)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "keys":
            return _keys()
        return _run(args)
    except (ConfigError, DataError) as exc:
        print(f"brmtrl: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `brmtrl keys | head`
        return 0
    except KeyboardInterrupt:
        print("brmtrl: interrupted; continue with `brmtrl run --resume DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
