"""Run outputs: ``results.json``, ``metrics.csv`` and an accuracy-vs-round plot.

``results.json`` and ``metrics.csv`` are written atomically (:func:`brmtrl.checkpoint.atomic_file`): a
temporary file unique to the process and the write, flushed, synced and renamed over the final name.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from .checkpoint import atomic_file, remove_stale_temps

__all__ = ["plot_history", "write_json", "write_metrics_csv", "write_outputs"]


def _clean(obj: Any) -> Any:
    """JSON without NaN: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON (non-finite floats as null), written atomically."""
    text = json.dumps(_clean(obj), indent=2) + "\n"
    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)


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


def finish_plot(fig: Any, ax: Any, path: Path, title: str, legend_size: int | None = None) -> None:
    """The common end of every line plot: title, grid, legend, tight layout, saved at 120 dpi, closed."""
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_history(path: Path, history: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    if all(isinstance(h.get("honest_acc_mean"), float) for h in history):
        acc = [float(h["honest_acc_mean"]) for h in history]
        lo = [float(h["honest_acc_min"]) for h in history]
        ax.plot(rounds, acc, marker=".", label="honest mean")
        ax.plot(rounds, lo, linestyle="--", label="honest min")
        ax.set_ylabel("test accuracy (honest clients)")
        ax.set_ylim(0, 1)
    else:
        ax.plot(rounds, [h["honest_loss_mean"] for h in history], marker=".", label="honest mean loss")
        ax.set_ylabel("test loss (honest clients)")
        ax.set_yscale("log")
    ax.set_xlabel("round")
    finish_plot(fig, ax, path, title)


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
        from .identification import plot_identification

        plot_identification(out / "identification.png", ident, "Byzantine identification · " + title)
    if results.get("transfer"):
        from .transfer import plot_transfer

        plot_transfer(out / "transfer.png", results["transfer"], "new clients · " + title)
    remove_stale_temps(out)
