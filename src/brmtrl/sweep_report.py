"""A sweep's summary: ``summary.csv``, ``summary.md`` and plots, rebuilt from its directory (``brmtrl report``).

Reads ``DIR/sweep.json`` (the grid's cells, written by :mod:`brmtrl.sweep`) and every cell's
``results.json``; cells that have not finished are listed as such, so a partial sweep can be reported.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .storage import atomic_file, load_json
from .sweep_layout import ERROR_LOG, RESULTS, STATE_FILE, GridError, cell_status, machine

__all__ = ["CellRow", "collect", "draw_heatmap", "machine", "write_report"]

CellRow = dict[str, Any]
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
CURVES_PNG = "accuracy.png"
FINAL_KEYS = ("honest_acc_mean", "honest_acc_std", "honest_acc_min", "honest_loss_mean", "transfer_acc_mean")


def _state(out: Path) -> dict[str, Any]:
    state = load_json(out / STATE_FILE)
    if not isinstance(state, dict) or not isinstance(state.get("cells"), list):
        raise GridError(f"{str(out)!r} is not a sweep directory ({STATE_FILE} is missing or damaged); "
                        "it is written by brmtrl sweep")
    return state


def _last_line(path: Path) -> str:
    try:
        lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def collect(out: Path) -> tuple[dict[str, Any], list[CellRow], dict[str, list[dict[str, Any]]]]:
    """The sweep's state, one row per cell (grid values, status, final numbers) and the history of
    every finished cell by name."""
    state = _state(out)
    rows: list[CellRow] = []
    histories: dict[str, list[dict[str, Any]]] = {}
    for cell in state["cells"]:
        folder = out / cell["name"]
        status = cell_status(folder)
        row: CellRow = {"cell": cell["name"], **cell["grid"], "status": status}
        res = load_json(folder / RESULTS) if status == "done" else None
        if isinstance(res, dict):
            final = res.get("final") or {}
            row.update({k: final.get(k) for k in FINAL_KEYS})
            row["rounds"] = final.get("rounds")
            row["wall_s"] = (res.get("timing") or {}).get("total_s")
            histories[cell["name"]] = list(res.get("history") or [])
        row["error"] = _last_line(folder / ERROR_LOG) if status == "error" else ""
        rows.append(row)
    return state, rows, histories


def _metric(rows: Sequence[CellRow]) -> tuple[str, str]:
    """Accuracy, or the test loss for regression runs (no accuracy anywhere)."""
    done = [r for r in rows if r["status"] == "done"]
    if done and all(r.get("honest_acc_mean") is None for r in done) and any(r.get("honest_loss_mean") is not None
                                                                            for r in done):
        return "honest_loss_mean", "honest test loss"
    return "honest_acc_mean", "honest accuracy"


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return json.dumps(v)
    return str(v)


def write_csv(path: Path, keys: Sequence[str], rows: Sequence[CellRow]) -> None:
    has_transfer = any(r.get("transfer_acc_mean") is not None for r in rows)
    cols = ["cell", *keys, "status", *[k for k in FINAL_KEYS if k != "transfer_acc_mean" or has_transfer],
            "rounds", "wall_s", "error"]
    with atomic_file(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow([_text(r.get(c)) for c in cols])


def _groups(keys: Sequence[str], rows: Sequence[CellRow]) -> dict[tuple[str, ...], list[CellRow]]:
    """Rows by their values of every grid key but ``seed`` (in the grid's order)."""
    out: dict[tuple[str, ...], list[CellRow]] = {}
    for r in rows:
        out.setdefault(tuple(_text(r[k]) for k in keys), []).append(r)
    return out


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "missing"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{float(np.mean(values)):.4f} ± {float(np.std(values)):.4f}"


def _done(rows: Sequence[CellRow], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r["status"] == "done" and isinstance(r.get(key), (int, float))
            and math.isfinite(r[key])]


def write_markdown(path: Path, state: Mapping[str, Any], keys: Sequence[str], rows: Sequence[CellRow]) -> None:
    group_keys = [k for k in keys if k != "seed"]
    metric, label = _metric(rows)
    has_transfer = any(r.get("transfer_acc_mean") is not None for r in rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "error", "partial", "missing")}
    mach = state.get("machine") or machine()
    header = [*(group_keys or ["cells"]), f"{label} (mean ± std over seeds)", "seeds done"] + \
        (["transfer accuracy"] if has_transfer else [])
    lines = ["# Sweep summary", "", f"Command: `{state.get('command') or 'brmtrl sweep'}`", "",
             f"Grid: `{state.get('grid_file', '')}` on `{state.get('base_config', '')}`; {len(rows)} cells: "
             f"{counts['done']} done, {counts['error']} failed, {counts['partial']} unfinished, "
             f"{counts['missing']} not started.", "",
             f"Machine: {mach.get('platform')}, {mach.get('cpus')} CPUs, torch {mach.get('torch')}; "
             f"total wall time {float(state.get('wall_s', 0.0)):.1f} s (the sum over the invocations that ended; "
             "a killed one records none).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for values, members in _groups(group_keys, rows).items():
        cells = list(values) if group_keys else ["all"]
        cells += [_mean_std(_done(members, metric)), f"{sum(r['status'] == 'done' for r in members)}/{len(members)}"]
        if has_transfer:
            cells.append(_mean_std(_done(members, "transfer_acc_mean")))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    not_done = [r for r in rows if r["status"] != "done"]
    if not_done:
        lines += ["", "## Cells not finished", ""]
        lines += [f"- `{r['cell']}`: {r['status']}" + (f" ({r['error']})" if r["error"] else "") for r in not_done]
    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- plots
def _key_label(key: str) -> str:
    """``aggregator.name`` -> ``aggregator``, ``attack.byzantine_fraction`` -> ``byzantine_fraction``."""
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def _label(keys: Sequence[str], values: Sequence[str]) -> str:
    return ", ".join(f"{_key_label(k)}={v}" for k, v in zip(keys, values)) or "all"


def _mean_curve(histories: Sequence[list[dict[str, Any]]], metric: str) -> tuple[list[int], list[float]]:
    """The metric against the round, mean over runs, at the rounds every run evaluated."""
    per_run = [{h["round"]: h.get(metric) for h in hist if isinstance(h.get(metric), (int, float))}
               for hist in histories]
    rounds = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    return rounds, [float(np.mean([p[r] for p in per_run])) for r in rounds]


def plot_curves(path: Path, keys: Sequence[str], rows: Sequence[CellRow],
                histories: Mapping[str, list[dict[str, Any]]]) -> bool:
    """Accuracy against the round, one line per group (mean over seeds), one panel per attack when
    ``attack.name`` varies. Returns whether anything was drawn: nothing is when no group was evaluated
    at two rounds or more (a grid scored once at the end has no curve; its table says it all)."""
    metric, label = _metric(rows)
    done = [r for r in rows if r["cell"] in histories]
    group_keys = [k for k in keys if k != "seed"]
    panel_key = "attack.name" if "attack.name" in group_keys and len({r["attack.name"] for r in done}) > 1 else None
    line_keys = [k for k in group_keys if k != panel_key]
    panels = list(dict.fromkeys(_text(r[panel_key]) for r in done)) if panel_key else [""]
    curves: dict[str, list[tuple[str, tuple[list[int], list[float]]]]] = {}
    for panel in panels:
        members = [r for r in done if not panel_key or _text(r[panel_key]) == panel]
        curves[panel] = [(_label(line_keys, values) + f" (n={len(group)})",
                          _mean_curve([histories[r["cell"]] for r in group], metric))
                         for values, group in _groups(line_keys, members).items()]
    if not any(len(rounds) > 1 for lines in curves.values() for _, (rounds, _) in lines):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        for line_label, (rounds, ys) in curves[panel]:
            if rounds:
                ax.plot(rounds, ys, marker=".", label=line_label)
        ax.set_title(f"attack={panel}" if panel_key else "", fontsize=9)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if metric == "honest_loss_mean":
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1)
    axes[0][0].set_ylabel(f"{label} (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _heatmap_axes(keys: Sequence[str]) -> tuple[str, str] | None:
    """The row key (a ``defense`` variant axis, else ``aggregator.name``) and the column key (an
    ``attack`` variant axis, else ``attack.name``) of the heatmaps, when the grid has both."""
    row = next((k for k in ("defense", "aggregator.name") if k in keys), None)
    col = next((k for k in ("attack", "attack.name") if k in keys), None)
    return (row, col) if row and col else None


def plot_heatmaps(out: Path, keys: Sequence[str], rows: Sequence[CellRow]) -> list[Path]:
    """Final accuracy per attack (columns) × defense (rows), mean over seeds, one heatmap per
    combination of the other grid keys; only when both vary (:func:`_heatmap_axes`)."""
    axes = _heatmap_axes(keys)
    if axes is None:
        return []
    row_key, col_key = axes
    attacks = list(dict.fromkeys(_text(r[col_key]) for r in rows))
    aggs = list(dict.fromkeys(_text(r[row_key]) for r in rows))
    if len(attacks) < 2 or len(aggs) < 2:
        return []
    metric, label = _metric(rows)
    other = [k for k in keys if k not in ("seed", col_key, row_key)]
    paths = []
    for values, members in _groups(other, rows).items():
        grid = np.full((len(aggs), len(attacks)), np.nan)
        for i, agg in enumerate(aggs):
            for j, att in enumerate(attacks):
                vals = _done([r for r in members if _text(r[row_key]) == agg
                              and _text(r[col_key]) == att], metric)
                if vals:
                    grid[i, j] = float(np.mean(vals))
        lo, hi = (0.0, 1.0) if metric == "honest_acc_mean" else (None, None)
        suffix = re.sub(r"[^A-Za-z0-9._]+", "-", "-".join(values)).strip("-")
        path = out / (f"heatmap-{suffix}.png" if suffix else "heatmap.png")
        draw_heatmap(path, grid, aggs, attacks, f"final {label} · {_label(other, values)}",
                     _key_label(col_key), _key_label(row_key), lo, hi)
        paths.append(path)
    return paths


def draw_heatmap(path: Path, grid: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str,
                 xlabel: str, ylabel: str, lo: float | None = 0.0, hi: float | None = 1.0) -> None:
    """A table of values as a heatmap with each cell's value written in it ('missing' for NaN)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.5, 0.55 * len(rows) + 1.8))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto", vmin=lo, vmax=hi)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = grid[i, j]
            ax.text(j, i, "missing" if math.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=7,
                    color="black" if math.isnan(v) or v > 0.6 else "white")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: str | Path) -> list[Path]:
    """Write ``summary.csv``, ``summary.md`` and the plots of the sweep in ``out``; return their paths."""
    out = Path(out)
    state, rows, histories = collect(out)
    keys = [str(k) for k in state.get("keys", [])]
    written = [out / SUMMARY_CSV, out / SUMMARY_MD]
    write_csv(written[0], keys, rows)
    write_markdown(written[1], state, keys, rows)
    if plot_curves(out / CURVES_PNG, keys, rows, histories):
        written.append(out / CURVES_PNG)
    else:
        (out / CURVES_PNG).unlink(missing_ok=True)  # a stale plot would show other numbers
    written += plot_heatmaps(out, keys, rows)
    return written
