"""Issue 19's transfer study, as tables: read the runs of ``experiments/transfer_cifar10.sh`` (or a
committed data file) and write the Markdown table ``docs/results.md`` embeds, with the compact data behind it.

    bash experiments/transfer_cifar10.sh runs/transfer-cifar10
    python experiments/transfer_study.py runs/transfer-cifar10 --name transfer-cifar10 --out docs/results/transfer
    python experiments/transfer_study.py --data docs/results/transfer/data/transfer-cifar10.json --name transfer-cifar10 \
        --out docs/results/transfer
    python experiments/transfer_study.py runs/transfer-cifar10 --merge docs/results/transfer/data/transfer-cifar10.json \
        --name transfer-cifar10 --out docs/results/transfer   # keep committed runs this directory lacks

A run directory is named ``<training>-seed<seed>`` (``brmtrl-none``, ``brmtrl-signflip``, ``fedavg``). For each
training, method and k, the table gives the mean over seeds (± std over seeds) of the new clients' mean test
accuracy; the gain of the fresh head on φ over the model trained from scratch is taken per seed on the same
new clients and samples (same seed: the same held-out clients, shots and draws), then averaged. Every
method's epochs and learning rate were chosen per new client and k on a validation part of its k shots
(``transfer.select``, recorded per run). The data file holds, per run, the transfer block of its
``results.json`` (per method and k: mean, std, min over the new clients; the chosen settings), its final
honest accuracy and its wall time; never checkpoints. Nothing here runs an experiment.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import fmt, load_json, merge, publish  # noqa: E402

METHODS = {"representation": "φ + fresh head", "fedavg_finetuned": "FedAvg's model fine-tuned",
           "scratch": "from scratch (tuned)"}
TRAININGS = {"brmtrl-none": "brmtrl, no attack", "brmtrl-signflip": "brmtrl, 20 % sign flip",
             "fedavg": "FedAvg, no attack"}
RUN = re.compile(r"^(?P<training>.+)-seed(?P<seed>\d+)$")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="?", help="the directory holding the runs")
    ap.add_argument("--data", type=Path, help="rebuild the table from this committed data file instead")
    ap.add_argument("--merge", type=Path, metavar="FILE", help="keep the runs of this committed data file that the "
                    "directory lacks")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/results/transfer"))
    args = ap.parse_args()
    if bool(args.runs) == bool(args.data) or (args.merge and args.data):
        ap.error("give either a runs directory (with --merge FILE or not) or --data FILE")
    data = None if args.data else export(args.runs)
    if args.merge:
        data = merge(data, args.merge, "runs", lambda r: (r["training"], r["seed"]))
    publish(data, args.data, tables, args.out, args.name)


def export(runs: Path) -> dict[str, Any]:
    """The compact data behind the table, from the finished runs under ``runs``."""
    out: dict[str, Any] = {"runs": []}
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        m = RUN.match(folder.name)
        res = load_json(folder / "results.json")
        transfer = res.get("transfer")
        if m is None or not transfer:
            continue
        final, timing = res.get("final") or {}, res.get("timing") or {}
        out["runs"].append({"training": m["training"], "seed": int(m["seed"]),
                            "rounds": final.get("rounds"), "honest_acc_mean": final.get("honest_acc_mean"),
                            "wall_s": timing.get("wall_s", timing.get("total_s")),
                            "transfer": {k: transfer[k] for k in ("shots", "clients", "select", "selected", "methods")
                                         if k in transfer}})
    return out


def tables(data: dict[str, Any]) -> list[str]:
    """The Markdown table of the study, from its data (:func:`export`)."""
    runs = data["runs"]
    trainings = [t for t in TRAININGS if any(r["training"] == t for r in runs)] + \
        sorted({r["training"] for r in runs} - set(TRAININGS))
    shots = sorted({int(k) for r in runs for k in r["transfer"].get("shots", [])})
    seeds = sorted({r["seed"] for r in runs})
    by = {(r["training"], r["seed"]): r for r in runs}

    def acc(training: str, seed: int, method: str, k: int) -> float | None:
        run = by.get((training, seed))
        stats = ((run or {}).get("transfer", {}).get("methods", {}).get(method) or {}).get(str(k)) or {}
        return stats.get("mean")

    lines = [f"{len(runs)} runs, seeds {seeds}; each cell: the new clients' mean test accuracy, mean ± std over "
             "seeds; epochs and learning rate chosen per new client and k on a validation part of its k shots.", "",
             "| training | method | " + " | ".join(f"k = {k}" for k in shots) + " |",
             "|---|---|" + "---:|" * len(shots)]
    for t in trainings:
        for method, title in METHODS.items():
            vals = [[v for s in seeds if (v := acc(t, s, method, k)) is not None] for k in shots]
            if any(vals):
                lines.append(f"| {TRAININGS.get(t, t)} | {title} | " + " | ".join(fmt(v) for v in vals) + " |")
    lines += ["", "Gain of the fresh head on φ over the tuned model from scratch, in points (per seed on the same "
              "new clients and samples, then mean ± std over seeds):", "",
              "| training | " + " | ".join(f"k = {k}" for k in shots) + " |", "|---|" + "---:|" * len(shots)]
    for t in trainings:
        row = []
        for k in shots:
            gains = [100 * (a - b) for s in seeds
                     if (a := acc(t, s, "representation", k)) is not None and (b := acc(t, s, "scratch", k)) is not None]
            row.append("—" if not gains else (f"{np.mean(gains):+.1f}" + (f" ± {np.std(gains):.1f}" if len(gains) > 1
                                                                           else "")))
        if any(c != "—" for c in row):
            lines.append(f"| {TRAININGS.get(t, t)} | " + " | ".join(row) + " |")
    return lines


if __name__ == "__main__":
    main()
