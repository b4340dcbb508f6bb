"""Run outputs: ``results.json``, ``metrics.csv`` and an accuracy-vs-round plot.

``results.json`` and ``metrics.csv`` are written atomically (:func:`brmtrl.checkpoint.atomic_file`): a
temporary file unique to the process and the write, flushed, synced and renamed over the final name.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .storage import _clean, atomic_file, remove_stale_temps, write_json
from .plots import plot_history, plot_identification, plot_transfer

__all__ = ["plot_history", "write_json", "write_metrics_csv", "write_outputs"]


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """One row per evaluated round, columns in order of first appearance, written atomically."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with atomic_file(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for row in history:
            w.writerow(_clean(row))


def write_outputs(out_dir: str | Path, results: dict[str, Any]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    write_metrics_csv(out / "metrics.csv", results["history"])
    c = results["config"]
    title = (f"{c['dataset']['name']} · {c['algorithm']['name']} + {c['aggregator']['name']} · "
             f"{c['attack']['name']} {c['attack']['byzantine_fraction']:.0%}")
    if results["history"]:
        plot_history(out / "accuracy.png", results["history"], title)
    ident = (results.get("identification") or {}).get("rounds") or []
    if ident and any(r["recall"] is not None for r in ident):
        plot_identification(out / "identification.png", ident, "Byzantine identification · " + title)
    if results.get("transfer"):
        plot_transfer(out / "transfer.png", results["transfer"], "new clients · " + title)
    remove_stale_temps(out)
