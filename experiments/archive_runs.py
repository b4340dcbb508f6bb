"""Keep the finished runs of a long study in the repository, so that another machine (or a later session
with a fresh checkout) continues it instead of starting over.

    python experiments/archive_runs.py save runs/compare-cifar10-fair docs/results/data/runs/compare-cifar10-fair
    python experiments/archive_runs.py restore docs/results/data/runs/compare-cifar10-fair runs/compare-cifar10-fair
    brmtrl sweep --grid configs/grids/compare_cifar10_fair.toml --out runs/compare-cifar10-fair ...   # the rest

``save`` copies, from a sweep directory or a directory of single runs, each finished run's ``results.json``
(the final metrics, the evaluated history, the wall time: no checkpoint, no plot) with its ``cell.json``,
and the sweep's ``sweep.json`` and ``grid.toml``; unfinished runs are left out (their checkpoints stay on the
machine that ran them). ``restore`` copies them back without overwriting anything: ``brmtrl sweep`` and
``experiments/transfer_cifar10.sh`` skip a run whose ``results.json`` is complete and run the others.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

TOP = ("sweep.json", "grid.toml")
PER_RUN = ("results.json", "cell.json")


def _finished(run: Path) -> bool:
    try:
        res = json.loads((run / "results.json").read_text())
    except (OSError, ValueError):
        return False
    rounds = ((res.get("config") or {}).get("train") or {}).get("rounds")
    return isinstance(res.get("final"), dict) and rounds is not None and res["final"].get("rounds") == rounds


def save(src: Path, dest: Path) -> list[str]:
    """Copy the finished runs of ``src`` into ``dest``; returns their names."""
    kept = []
    for name in TOP:
        if (src / name).is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dest / name)
    for run in sorted(p for p in src.iterdir() if p.is_dir()):
        if not _finished(run):
            continue
        (dest / run.name).mkdir(parents=True, exist_ok=True)
        for name in PER_RUN:
            if (run / name).is_file():
                shutil.copy2(run / name, dest / run.name / name)
        kept.append(run.name)
    return kept


def restore(src: Path, dest: Path) -> list[str]:
    """Copy the archived files of ``src`` into ``dest`` where ``dest`` has none; returns what was copied."""
    copied = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dest / path.relative_to(src)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied.append(str(path.relative_to(src)))
    return copied


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("save", "restore"))
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    args = ap.parse_args()
    if not args.src.is_dir():
        ap.error(f"{str(args.src)!r} is not a directory")
    done = save(args.src, args.dest) if args.action == "save" else restore(args.src, args.dest)
    print(f"{args.action}: {len(done)} {'runs' if args.action == 'save' else 'files'} -> {args.dest}")


if __name__ == "__main__":
    main()
