"""Issue 9's comparative study, as tables and figures: read finished (or partial) sweeps of
``configs/grids/compare_*.toml`` and single runs, and write the Markdown and plots ``docs/results.md``
embeds. Nothing here runs an experiment: every figure is read off ``results.json``.

    brmtrl sweep --grid configs/grids/compare_femnist.toml --out runs/compare-femnist --workers 1 --threads 1
    python experiments/results.py grid runs/compare-femnist --name femnist --out docs/results
    python experiments/results.py runs runs/c100-fedrep runs/c100-brmtrl-gm-signflip ... \
        --labels "FedRep, no attack" "brmtrl + GM, 20 % sign flip" ... --name cifar10-100 --out docs/results

``grid`` writes ``<name>.md``: final honest accuracy per algorithm and defense (rows) and attack
(columns), mean ± std over seeds; each row's drop under attack from its own attack-free cell; the gap to
attack-free FedRep (``fedrep`` with ``mean`` under ``none``); and ``<name>-heatmap.png``, ``<name>-curves.png``.

``runs`` writes ``<name>.md`` (final accuracy and wall time per run, the transfer table when the runs
have one) with ``<name>-curves.png`` (accuracy against round) and ``<name>-transfer.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import fmt, load_json  # noqa: E402
from brmtrl.sweep_report import collect, draw_heatmap, machine  # noqa: E402

#: names used in the tables (the registry's names stay in backticks beside them)
ALGORITHMS = {"fedrep": "FedRep", "fedavg": "FedAvg", "fedavg_ft": "FedAvg + FT", "fedper": "FedPer",
              "lg_fedavg": "LG-FedAvg", "local": "Local-only"}
REFERENCE = ("fedrep", "mean", "none")  # attack-free FedRep


def _row_label(alg: str, defense: str, markdown: bool = True) -> str:
    """'FedRep + `krum` (= brmtrl)' in the tables, 'FedRep + krum' on the heatmap."""
    name = ALGORITHMS.get(alg, alg)
    if alg == "local":
        return name
    if not markdown:
        return f"{name} + {defense}"
    return f"{name} + `{defense}`" + (" (= brmtrl)" if alg == "fedrep" and defense != "mean" else "")


def grid_report(sweep: Path, name: str, out: Path) -> list[str]:
    state, rows, _ = collect(sweep)
    rows_done = [r for r in rows if r["status"] == "done" and isinstance(r.get("honest_acc_mean"), (int, float))]
    attacks = list(dict.fromkeys(r["attack.name"] for r in rows))
    by_seed = {(r["algorithm.name"], r["defense"], r["attack.name"], int(r.get("seed", 0))): float(r["honest_acc_mean"])
               for r in rows_done}
    seeds = sorted({k[3] for k in by_seed})
    present = list(dict.fromkeys((r["algorithm.name"], r["defense"]) for r in rows))

    def accs(a: str, d: str, t: str) -> list[float]:
        return [by_seed[(a, d, t, s)] for s in seeds if (a, d, t, s) in by_seed]

    def diff(a: str, d: str, t: str, ref: tuple[str, str, str]) -> float:
        vals = [100 * (by_seed[(a, d, t, s)] - by_seed[(*ref, s)]) for s in seeds
                if (a, d, t, s) in by_seed and (*ref, s) in by_seed]
        return float(np.mean(vals)) if vals else math.nan

    def pts(v: float) -> str:
        return "—" if math.isnan(v) else f"{v:+.1f}"

    done = sum(r["status"] == "done" for r in rows)
    cell_s = [float(r["wall_s"]) for r in rows_done if isinstance(r.get("wall_s"), (int, float))]
    m = machine()
    ref = accs(*REFERENCE)
    lines = [f"Sweep `{sweep}`: {done} of {len(rows)} cells done; seeds {seeds}; wall time of the sweep's "
             f"invocations that ended {float(state.get('wall_s', 0.0)):.0f} s (a killed one records none; "
             f"cells' own time {sum(cell_s):.0f} s, {np.mean(cell_s) if cell_s else math.nan:.1f} s per cell); "
             f"machine: {m['platform']}, {m['cpus']} CPUs, "
             f"torch {m['torch']}.", "", f"Command: `{state.get('command', '')}`", "",
             f"Attack-free FedRep (`fedrep`, `mean`, `none`): **{fmt(ref)}**.", "",
             "Final honest accuracy (mean ± std over seeds):", "",
             "| algorithm + defense | " + " | ".join(attacks) + " |", "|---|" + "---:|" * len(attacks)]
    for a, d in present:
        lines.append(f"| {_row_label(a, d)} | " + " | ".join(fmt(accs(a, d, t)) for t in attacks) + " |")
    lines += ["", "Change under attack from the same row without attack, and gap to attack-free FedRep, in points "
              "(mean over seeds of per-seed differences; negative = below):", "",
              "| algorithm + defense | " + " | ".join(f"{t}: own drop" for t in attacks if t != "none")
              + " | " + " | ".join(f"{t}: vs FedRep" for t in attacks) + " |",
              "|---|" + "---:|" * (2 * len(attacks) - 1)]
    for a, d in present:
        own = [pts(diff(a, d, t, (a, d, "none"))) for t in attacks if t != "none"]
        vs = [pts(diff(a, d, t, REFERENCE)) for t in attacks]
        lines.append(f"| {_row_label(a, d)} | " + " | ".join(own + vs) + " |")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    grid = np.array([[np.mean(accs(a, d, t)) if accs(a, d, t) else np.nan for t in attacks] for a, d in present])
    labels = [_row_label(a, d, markdown=False) for a, d in present]
    draw_heatmap(out / f"{name}-heatmap.png", grid, labels, attacks,
                 f"{name}: final honest accuracy (attack-free FedRep {np.mean(ref) if ref else math.nan:.3f})",
                 "attack (20 % Byzantine clients)", "algorithm + defense")
    curves = sweep / "accuracy.png"
    if curves.is_file():
        shutil.copyfile(curves, out / f"{name}-curves.png")
    else:  # the sweep evaluated each cell once: no curve to show, and a stale copy would mislead
        (out / f"{name}-curves.png").unlink(missing_ok=True)
    return lines


def _transfer_rows(results: list[dict[str, Any]], labels: list[str]) -> tuple[list[str], list[str], dict[str, Any]]:
    shots: list[int] = []
    for res in results:
        shots += [k for k in (res.get("transfer") or {}).get("shots", []) if k not in shots]
    if not shots:
        return [], [], {}
    cols: list[tuple[str, str, dict[str, Any]]] = []   # (column label, method, per-k stats)
    seen_other: set[str] = set()   # the same baseline on the same samples (equal numbers): one column
    for label, res in zip(labels, results):
        methods = (res.get("transfer") or {}).get("methods") or {}
        if "representation" in methods:
            cols.append((f"φ + fresh head: {label}", "representation", methods["representation"]))
        for method, title in (("fedavg_finetuned", "FedAvg's model fine-tuned"), ("scratch", "from scratch")):
            if method in methods:
                key = f"{method}:{json.dumps(methods[method], sort_keys=True)}"
                if key not in seen_other:
                    seen_other.add(key)
                    cols.append((title, method, methods[method]))
    cols.sort(key=lambda c: c[1] != "representation")   # every run's φ first, then the shared baselines
    lines = ["| k per class | " + " | ".join(c[0] for c in cols) + " |", "|---:|" + "---:|" * len(cols)]
    for k in shots:
        cells = []
        for _, _, per_k in cols:
            s = per_k.get(str(k)) or {}
            cells.append("—" if s.get("mean") is None else f"{s['mean']:.3f} ± {s['std']:.3f} (min {s['min']:.2f})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    gains = []
    scratch = next((c[2] for c in cols if c[1] == "scratch"), None)
    if scratch is not None:
        for col, method, per_k in cols:
            if method != "representation":
                continue
            for k in shots:
                a, b = (per_k.get(str(k)) or {}).get("mean"), (scratch.get(str(k)) or {}).get("mean")
                if a is not None and b is not None:
                    gains.append(f"{col}, k = {k}: {100 * (a - b):+.1f} points")
    return lines, gains, {"shots": shots, "methods": {c[0]: c[2] for c in cols}}


def runs_report(dirs: list[Path], labels: list[str], name: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from brmtrl.plots import finish_plot, plot_transfer

    results = [load_json(d / "results.json") for d in dirs]
    lines = ["| run | directory | final honest accuracy | std | min | rounds | wall time | s/round |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for d, label, res in zip(dirs, labels, results):
        final, timing = res.get("final") or {}, res.get("timing") or {}
        if not final:
            lines.append(f"| {label} | `{d}` | not finished | | | | | |")
            continue
        lines.append(f"| {label} | `{d}` | {final['honest_acc_mean']:.4f} | {final['honest_acc_std']:.4f} | "
                     f"{final['honest_acc_min']:.4f} | {final['rounds']} | {timing.get('total_s', math.nan):.0f} s | "
                     f"{timing.get('per_round_s', math.nan):.2f} |")
        hist = [h for h in res.get("history") or [] if h.get("honest_acc_mean") is not None]
        ax.plot([h["round"] for h in hist], [h["honest_acc_mean"] for h in hist], marker=".", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("honest clients' test accuracy (own head)")
    ax.set_ylim(0, 1)
    out.mkdir(parents=True, exist_ok=True)
    finish_plot(fig, ax, out / f"{name}-curves.png", f"{name}: accuracy against round", legend_size=8)
    table, gains, together = _transfer_rows(results, labels)
    if table:
        lines += ["", "Transfer to the held-out new clients (mean ± std over them, and their minimum):", "", *table]
        if gains:
            lines += ["", "φ + fresh head minus from scratch (target: at least +10 points at k = 10):", ""]
            lines += [f"- {g}" for g in gains]
        plot_transfer(out / f"{name}-transfer.png", together, f"{name}: transfer to new clients")
        for label, res in zip(labels, results):
            if res.get("transfer"):
                safe = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
                plot_transfer(out / f"{name}-transfer-{safe}.png", res["transfer"], f"transfer: {label}")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("grid", help="tables and heatmap of a comparative sweep")
    g.add_argument("sweep", type=Path)
    g.add_argument("--name", required=True)
    g.add_argument("--out", type=Path, default=Path("docs/results"))
    r = sub.add_parser("runs", help="final accuracy, curves and transfer of single runs")
    r.add_argument("dirs", type=Path, nargs="+")
    r.add_argument("--labels", nargs="+", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--out", type=Path, default=Path("docs/results"))
    args = ap.parse_args()
    if args.what == "grid":
        lines = grid_report(args.sweep, args.name, args.out)
    else:
        if len(args.labels) != len(args.dirs):
            ap.error(f"--labels: {len(args.labels)} labels for {len(args.dirs)} run directories")
        lines = runs_report(args.dirs, args.labels, args.name, args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
