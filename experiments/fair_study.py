"""Issue 19's fair comparative study, as tables: read a finished (or partial) sweep of a grid with a
``method`` and an ``attack`` axis of variants (``configs/grids/compare_cifar10_fair.toml``) and write the
Markdown tables ``docs/results.md`` embeds, with the compact data behind them.

    brmtrl sweep --grid configs/grids/compare_cifar10_fair.toml --out runs/compare-cifar10-fair --workers 1 --threads 1
    python experiments/fair_study.py runs/compare-cifar10-fair [runs/compare-cifar10-fair-gm] --name cifar10-fair --out docs/results
    python experiments/fair_study.py --data docs/results/data/cifar10-fair.json --name cifar10-fair --out docs/results
    python experiments/fair_study.py runs/compare-cifar10-fair --merge docs/results/data/cifar10-fair.json --name cifar10-fair

``--merge FILE`` keeps the cells of a committed data file that the sweeps lack (cells finished on another
machine or in a checkout whose ``runs/`` is gone; ``brmtrl sweep --only`` runs just the missing ones).

Every gap is taken on the same clients: a cell's accuracy against attack-free FedRep (``fedrep_mean``
under ``none``, same seed) scored on that cell's honest clients (``final.client_scores`` of the reference,
weighted by test-set size under FedRep's protocol). A method that shares nothing (``local``) trains the
same honest models with or without an attack, so its attack-free run scored on an attacked run's honest
clients stands for it under that attack (marked †). The data file (``<out>/data/<name>.json``) holds per
cell and seed the final metrics, the evaluated history, the wall time and the clients' scores of the
attack-free cells; never checkpoints. Nothing here runs an experiment.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import fmt, load_json, merge, publish  # noqa: E402
from brmtrl.evaluation import mean_over  # noqa: E402
from brmtrl.sweep_report import collect  # noqa: E402

REFERENCE = "fedrep_mean"
NO_ATTACK = "none"
SHARES_NOTHING = ("local",)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, nargs="*", help="the sweep directories (compare_cifar10_fair.toml's, and "
                    "compare_cifar10_fair_gm.toml's when it ran)")
    ap.add_argument("--data", type=Path, help="rebuild the tables from this committed data file instead")
    ap.add_argument("--merge", type=Path, metavar="FILE", help="keep the cells of this committed data file that the "
                    "sweeps lack")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    args = ap.parse_args()
    if bool(args.sweep) == bool(args.data) or (args.merge and args.data):
        ap.error("give either sweep directories (with --merge FILE or not) or --data FILE")
    data = None if args.data else export(*args.sweep)
    if args.merge:
        data = merge(data, args.merge, "cells", lambda c: (c["method"], c["attack"], c["seed"]))
    publish(data, args.data, tables, args.out, args.name)


def export(*sweeps: Path) -> dict[str, Any]:
    """The compact data behind the tables, from the finished cells of one or more sweeps."""
    collected = [(sweep, *collect(sweep)) for sweep in sweeps]
    out: dict[str, Any] = {"sweep": {"path": "; ".join(str(s) for s in sweeps),
                                     "command": " && ".join(state.get("command", "") for _, state, _, _ in collected),
                                     "wall_s": round(sum(float(state.get("wall_s", 0.0)) for _, state, _, _ in collected), 1)},
                           "cells_total": sum(len(rows) for _, _, rows, _ in collected),
                           "totals": {str(sweep): len(rows) for sweep, _, rows, _ in collected}, "cells": []}
    for sweep, _, rows, histories in collected:
        _add_cells(out, sweep, rows, histories)
    return out


def _add_cells(out: dict[str, Any], sweep: Path, rows: list[dict[str, Any]], histories: dict[str, Any]) -> None:
    for r in rows:
        if r["status"] != "done" or not isinstance(r.get("honest_acc_mean"), (int, float)):
            continue
        res = load_json(sweep / r["cell"] / "results.json")
        final = res.get("final") or {}
        out["weighted"] = (res.get("config") or {}).get("eval", {}).get("protocol") == "fedrep"
        cell = {"method": r["method"], "attack": r["attack"], "seed": int(r["seed"]),
                "honest_acc_mean": float(r["honest_acc_mean"]), "honest_acc_std": r.get("honest_acc_std"),
                "honest_acc_min": r.get("honest_acc_min"), "byzantine": list(final.get("byzantine_clients", [])),
                "wall_s": r.get("wall_s"), "per_round_s": (res.get("timing") or {}).get("per_round_s"),
                "history": [[h["round"], None if h.get("honest_acc_mean") is None else round(h["honest_acc_mean"], 4)]
                            for h in histories.get(r["cell"], [])]}
        if r["attack"] == NO_ATTACK and "client_scores" in final:
            cell["client_scores"] = final["client_scores"]
        out["cells"].append(cell)


def tables(data: dict[str, Any]) -> list[str]:
    """The Markdown tables of the study, from its data (:func:`export`)."""
    cells = data["cells"]
    weighted = bool(data.get("weighted"))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    attacks = list(dict.fromkeys(c["attack"] for c in cells))
    seeds = sorted({c["seed"] for c in cells})
    by = {(c["method"], c["attack"], c["seed"]): c for c in cells}
    # the honest clients of each attacked seed (every attacked cell of a seed has the same Byzantine clients)
    byz = {(c["attack"], c["seed"]): set(c["byzantine"]) for c in cells if c["attack"] != NO_ATTACK}

    def on_honest(method: str, attack: str, seed: int) -> float | None:
        """``method``'s attack-free run of ``seed`` scored on the honest clients of ``attack``'s runs."""
        clean = by.get((method, NO_ATTACK, seed))
        if clean is None or "client_scores" not in clean:
            return None
        sc = clean["client_scores"]
        return mean_over(sc, [c for c in sc["clients"] if c not in byz.get((attack, seed), set())], weighted=weighted)

    def acc(method: str, attack: str, seed: int) -> tuple[float | None, bool]:
        """The cell's accuracy, or (for a method that shares nothing) its clean run on the attacked honest
        clients; the flag says which."""
        cell = by.get((method, attack, seed))
        if cell is not None:
            return cell["honest_acc_mean"], False
        if method in SHARES_NOTHING and attack != NO_ATTACK and (attack, seed) in byz:
            return on_honest(method, attack, seed), True
        return None, False

    def gap(method: str, attack: str) -> tuple[float, bool]:
        diffs, stood_in = [], False
        for s in seeds:
            a, flag = acc(method, attack, s)
            ref = on_honest(REFERENCE, attack, s) if attack != NO_ATTACK else \
                (by[(REFERENCE, NO_ATTACK, s)]["honest_acc_mean"] if (REFERENCE, NO_ATTACK, s) in by else None)
            if a is not None and ref is not None:
                diffs.append(100 * (a - ref))
                stood_in |= flag
        return (float(np.mean(diffs)) if diffs else math.nan), stood_in

    sw = data["sweep"]
    wall = sum(float(c.get("wall_s") or 0.0) for c in cells)
    lines = [f"Sweep `{sw['path']}`: {len(cells)} of {data['cells_total']} cells done; seeds {seeds}; the cells' wall "
             f"times add up to {wall:.0f} s; command `{sw['command']}`.", "",
             "Final honest accuracy (mean ± std over seeds; † Local-only's attack-free run scored on the attacked "
             "runs' honest clients: it trains the same models with or without an attack):", "",
             "| method | " + " | ".join(attacks) + " |", "|---|" + "---:|" * len(attacks)]
    for m in methods:
        row = []
        for a in attacks:
            vals = [acc(m, a, s) for s in seeds]
            got = [v for v, _ in vals if v is not None]
            row.append(fmt(got) + (" †" if got and any(f for _, f in vals) else "") if got else "—")
        lines.append(f"| `{m}` | " + " | ".join(row) + " |")
    lines += ["", f"Gap to attack-free FedRep (`{REFERENCE}` under `{NO_ATTACK}`), in points, scored on the same "
              "honest clients (mean over seeds of the per-seed difference):", "",
              "| method | " + " | ".join(attacks) + " |", "|---|" + "---:|" * len(attacks)]
    for m in methods:
        row = []
        for a in attacks:
            g, flag = gap(m, a)
            row.append("—" if math.isnan(g) else f"{g:+.1f}" + (" †" if flag else ""))
        lines.append(f"| `{m}` | " + " | ".join(row) + " |")
    lines += ["", "Seconds per round (mean over seeds; one cell at a time, one thread, beside other jobs: "
              "ratios between methods, not speeds):", "", "| method | " + " | ".join(attacks) + " |",
              "|---|" + "---:|" * len(attacks)]
    for m in methods:
        row = []
        for a in attacks:
            t = [by[(m, a, s)]["per_round_s"] for s in seeds if (m, a, s) in by and by[(m, a, s)].get("per_round_s")]
            row.append(f"{np.mean(t):.1f}" if t else "—")
        lines.append(f"| `{m}` | " + " | ".join(row) + " |")
    return lines


if __name__ == "__main__":
    main()
