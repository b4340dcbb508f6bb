"""Issue 8's attack x defense matrix, as tables: read finished (or partial) sweeps of
``configs/grids/robustness_*.toml`` and write the Markdown tables and heatmaps ``docs/robustness.md``
embeds.

    brmtrl sweep --grid configs/grids/robustness_quick.toml --out runs/robustness-quick --workers 1 --threads 1
    brmtrl sweep --grid configs/grids/robustness_cifar10.toml --out runs/robustness-cifar10 --workers 1 --threads 1
    python experiments/robustness.py runs/robustness-quick --name quick --out docs/robustness
    python experiments/robustness.py runs/robustness-cifar10 --name cifar10 --out docs/robustness

Issue 18's matrices with the attacks that know the defense (``robustness_adaptive_*.toml``) name their attacks
on an ``attack`` axis of variants (``min_max_tailored`` = ``min_max`` with ``attack.tailored = true``).

It also writes the compact data behind the tables, ``<out>/data/<name>.json`` (per cell: defense, attack,
seed, final honest accuracy, identification, wall time, evaluated history; never checkpoints), and
``--data <out>/data/<name>.json`` rebuilds ``<out>/<name>.md`` from it alone (the test suite checks the
committed tables this way, byte for byte).

For each sweep it writes ``<out>/<name>.md`` (final honest accuracy per defense and attack, mean ± std
over seeds; the gap of each cell to attack-free FedRep = ``mean`` under ``none``; per attack the best
defense; per defense its worst attack; the identification precision and recall) and
``<out>/<name>-heatmap.png``. Nothing here runs an experiment: every figure is read off ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import fmt as _fmt, load_json as _load  # noqa: E402
from brmtrl.evaluation import mean_over  # noqa: E402
from brmtrl.sweep_report import collect, draw_heatmap  # noqa: E402

REFERENCE = ("mean", "none")  # attack-free FedRep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, nargs="*",
                    help="one sweep directory, or several whose rows are read as one matrix (e.g. a defense "
                         "with the guard beside the same defenses without it)")
    ap.add_argument("--data", type=Path, help="rebuild the tables from this committed data file instead of sweeps")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/robustness"))
    ap.add_argument("--recommended", default="geometric_median",
                    help="the defense whose identification is reported (kept in the data file)")
    args = ap.parse_args()
    if bool(args.sweep) == bool(args.data):
        ap.error("give either sweep directories or --data FILE")
    data = json.loads(args.data.read_text()) if args.data else export(args.sweep)
    if not args.data:
        data["recommended"] = args.recommended
        (args.out / "data").mkdir(parents=True, exist_ok=True)
        (args.out / "data" / f"{args.name}.json").write_text(json.dumps(data, separators=(",", ":")) + "\n")
    lines, heat = tables(data, data.get("recommended", args.recommended))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    if not args.data:
        _heatmap(args.out / f"{args.name}-heatmap.png", *heat, args.name)
    print("\n".join(lines))


def export(sweeps: list[Path]) -> dict:
    """The compact data behind the tables, from finished sweeps: per cell its defense, attack and seed, the
    final honest accuracy, the identification, the wall time and the evaluated history (round, accuracy)."""
    out: dict = {"sweeps": [], "cells": []}
    for sweep in sweeps:
        state, rows, histories = collect(sweep)
        out["sweeps"].append({"path": str(sweep), "command": state.get("command", ""),
                              "wall_s": round(float(state.get("wall_s", 0.0)), 1)})
        axis = "attack" if rows and "attack" in rows[0] else "attack.name"
        for r in rows:
            if r["status"] != "done" or not isinstance(r.get("honest_acc_mean"), (int, float)):
                continue
            res = _load(sweep / r["cell"] / "results.json")
            overall = (res.get("identification") or {}).get("overall") or {}
            final = res.get("final") or {}
            # the reference keeps its per-client scores, every cell its Byzantine clients: each gap is then
            # taken on the cell's honest clients (issue 19)
            scores = {"client_scores": final["client_scores"]} \
                if (r["defense"], r[axis]) == REFERENCE and "client_scores" in final else {}
            out["weighted"] = (res.get("config") or {}).get("eval", {}).get("protocol") == "fedrep"
            out["cells"].append({
                "defense": r["defense"], "attack": r[axis], "seed": int(r.get("seed", 0)),
                "honest_acc_mean": float(r["honest_acc_mean"]),
                "precision": overall.get("precision"), "recall": overall.get("recall"),
                "wall_s": r.get("wall_s"), "byzantine": list(final.get("byzantine_clients", [])), **scores,
                **({"excluded": [rep["byzantine_excluded"], rep["honest_excluded"],
                                 max((e["round"] for e in rep["excluded"]
                                      if e["client"] in final.get("byzantine_clients", [])), default=None)]}
                   if (rep := res.get("reputation")) else {}),
                "history": [[h["round"], None if h.get("honest_acc_mean") is None else round(h["honest_acc_mean"], 4)]
                            for h in histories.get(r["cell"], [])]})
        out["cells_total"] = out.get("cells_total", 0) + len(rows)
    return out


def tables(data: dict, rec: str) -> tuple[list[str], tuple]:
    """The Markdown tables of one matrix, from its data (:func:`export`)."""
    cells = data["cells"]
    defenses = list(dict.fromkeys(c["defense"] for c in cells))
    attacks = list(dict.fromkeys(c["attack"] for c in cells))
    acc: dict[tuple[str, str], list[float]] = {}
    by_seed: dict[tuple[str, str, int], float] = {}
    ident: dict[tuple[str, str], list[dict]] = {}
    for c in cells:
        key = (c["defense"], c["attack"])
        acc.setdefault(key, []).append(c["honest_acc_mean"])
        by_seed[(*key, c["seed"])] = c["honest_acc_mean"]
        ident.setdefault(key, []).append({"precision": c["precision"], "recall": c["recall"]})
    seeds = sorted({s for (_, _, s) in by_seed})
    ref = acc.get(REFERENCE, [])
    ref_mean = float(np.mean(ref)) if ref else math.nan
    byzantine = {(c["defense"], c["attack"], c["seed"]): set(c.get("byzantine", [])) for c in cells}
    ref_scores = {c["seed"]: c["client_scores"] for c in cells
                  if (c["defense"], c["attack"]) == REFERENCE and "client_scores" in c}
    same_clients = bool(ref_scores)

    def reference(d: str, a: str, s: int) -> float:
        """Attack-free FedRep of seed s, scored on the honest clients of cell (d, a, s) when the data has its
        per-client scores (data written before 2026-12-02 has not: then on all of its clients)."""
        if s not in ref_scores:
            return by_seed[(*REFERENCE, s)]
        sc = ref_scores[s]
        value = mean_over(sc, [c for c in sc["clients"] if c not in byzantine[(d, a, s)]],
                          weighted=bool(data.get("weighted")))
        return math.nan if value is None else value

    def gap(d: str, a: str) -> float:
        """Mean over seeds of (cell − attack-free FedRep of the same seed on the cell's honest clients), in
        points."""
        diffs = [100 * (by_seed[(d, a, s)] - reference(d, a, s)) for s in seeds
                 if (d, a, s) in by_seed and (*REFERENCE, s) in by_seed]
        return float(np.mean(diffs)) if diffs else math.nan

    lines = [" ".join(f"Sweep `{sw['path']}`: total wall time {sw['wall_s']:.0f} s; command `{sw['command']}`."
                      for sw in data["sweeps"]),
             f"{len(cells)} of {data['cells_total']} cells done; seeds {seeds}.", "",
             f"Attack-free FedRep (`mean`, `none`): **{_fmt(ref)}**.", "",
             "Final honest accuracy (mean ± std over seeds):", "",
             "| defense | " + " | ".join(attacks) + " |", "|---|" + "---:|" * len(attacks)]
    for d in defenses:
        lines.append(f"| `{d}` | " + " | ".join(_fmt(acc.get((d, a), [])) for a in attacks) + " |")
    lines += ["", "Gap to attack-free FedRep, in points (mean over seeds of the per-seed difference; "
              "negative = below; " + ("attack-free FedRep scored on each cell's honest clients):" if same_clients
                                      else "attack-free FedRep scored on all its clients):"), "", "| defense | " + " | ".join(attacks) + " | worst |",
              "|---|" + "---:|" * (len(attacks) + 1)]
    worst: dict[str, tuple[float, str]] = {}
    for d in defenses:
        gaps = {a: gap(d, a) for a in attacks}
        attacked = {a: g for a, g in gaps.items() if a != "none" and not math.isnan(g)}
        w = min(attacked.items(), key=lambda kv: kv[1]) if attacked else ("—", math.nan)
        worst[d] = (w[1], w[0])
        lines.append(f"| `{d}` | " + " | ".join("—" if math.isnan(g) else f"{g:+.1f}" for g in gaps.values())
                     + (f" | {w[1]:+.1f} ({w[0]}) |" if not math.isnan(w[1]) else " | — |"))
    lines += ["", "Best defense per attack (target: within 3 points of attack-free FedRep; the mean counts, "
              "as a rule one could ship):", "",
              "| attack | best defense | accuracy | gap (points) | target met |", "|---|---|---:|---:|---|"]
    for a in attacks:
        if a == "none":
            continue
        cands = [(gap(d, a), d) for d in defenses if not math.isnan(gap(d, a))]
        if not cands:
            continue
        g, d = max(cands)
        lines.append(f"| {a} | `{d}` | {_fmt(acc[(d, a)])} | {g:+.2f} | {'yes' if g >= -3 else f'no (by {-3 - g:.2f})'} |")
    lines += ["", "Each defense's worst attack (target for the recommended default: within 5 points for every "
              "attack at once):", "", "| defense | worst attack | gap (points) | within 5 |", "|---|---|---:|---|"]
    for d, (g, a) in sorted(worst.items(), key=lambda kv: -kv[1][0] if not math.isnan(kv[1][0]) else 1e9):
        if math.isnan(g):
            continue
        lines.append(f"| `{d}` | {a} | {g:+.2f} | {'yes' if g >= -5 else f'no (by {-5 - g:.2f})'} |")
    lines += ["", f"Identification by `{rec}` (the server step's rejections and the rule's distrusted clients "
              "against the true Byzantine clients, over all rounds; mean over seeds):", "",
              "| attack | precision | recall |", "|---|---:|---:|"]
    for a in attacks:
        vals = ident.get((rec, a), [])
        p = [v["precision"] for v in vals if isinstance(v.get("precision"), (int, float))]
        rc = [v["recall"] for v in vals if isinstance(v.get("recall"), (int, float))]
        if a != "none" and (p or rc):
            lines.append(f"| {a} | {_fmt(p)} | {_fmt(rc)} |")
    with_rep = [d for d in defenses if any("excluded" in c for c in cells if c["defense"] == d)]
    for d in with_rep:
        lines += ["", f"Clients excluded by the server's reputation under `{d}` (summed over seeds; per seed "
                  f"{max(len(b) for b in byzantine.values())} of the clients are Byzantine), and the round by "
                  "which every excluded Byzantine client was:", "",
                  "| attack | Byzantine excluded | honest excluded | last Byzantine excluded in round (per seed) |",
                  "|---|---:|---:|---|"]
        for a in attacks:
            ex = [c["excluded"] for c in cells if c["defense"] == d and c["attack"] == a and "excluded" in c]
            if ex:
                lines.append(f"| {a} | {sum(e[0] for e in ex)} | {sum(e[1] for e in ex)} | "
                             + ", ".join("—" if e[2] is None else str(e[2]) for e in ex) + " |")
    return lines, (defenses, attacks, acc, ref_mean)


def _heatmap(path: Path, defenses: list[str], attacks: list[str], acc: dict, ref: float, name: str) -> None:
    grid = np.array([[np.mean(acc[(d, a)]) if (d, a) in acc else np.nan for a in attacks] for d in defenses])
    draw_heatmap(path, grid, defenses, attacks, f"{name}: final honest accuracy (attack-free FedRep {ref:.3f})",
                 "attack (20 % Byzantine clients)", "defense")


if __name__ == "__main__":
    main()
