"""Per-round time of one config on the three engines, measured in one run of this script.

    python benchmarks/engines.py --config configs/quick.toml --rounds 10
    python benchmarks/engines.py --config configs/cifar10.toml --rounds 2 \
        --set dataset.root=../shared/data/cifar10

Engines: the built-in simulation, Flower's simulation engine (Ray, one ClientApp at a time:
``flower.backend_cpus=1``, so that the clients' training adds up on one critical path) and
``deploy-local`` (a SuperLink and 4 SuperNodes as processes; the SuperNodes train in parallel), once with
Flower's SuperExec (a fresh ClientApp process per message) and once with brmtrl's warm ClientApp worker
(``--warm-clientapp``: one long-lived process per SuperNode; ``--no-warm`` skips it).
Per round: wall time, the clients' local training (the slowest SuperNode's share under deploy-local),
our aggregation, and Flower's overhead = round − training − aggregation. The first round is left out
of the averages (it loads the data and imports the apps) when more than one round runs.
Honest accuracy at the end is printed too: the three engines run the same clients with the same seeds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from brmtrl.config import load_config  # noqa: E402
from brmtrl.engine import Simulation  # noqa: E402


def summarize(name: str, res: dict, critical: str) -> tuple:
    rows = [h for h in res["history"]]
    rows = rows[1:] if len(rows) > 1 else rows
    rnd = statistics.mean(h["round_s"] for h in rows)
    train = statistics.mean(h.get(critical, h["clients_train_s"]) for h in rows)
    agg = statistics.mean(h["aggregate_s"] for h in rows)
    over = rnd - train - agg
    return (name, rnd, train, agg, over, over / rnd, res["final"]["honest_acc_mean"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/quick.toml")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--supernodes", type=int, default=4)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--device", default="auto", help="the config's device setting (auto: CUDA when present)")
    ap.add_argument("--no-warm", action="store_true", help="skip deploy-local with the warm ClientApp worker "
                    "(brmtrl.flower.warm_worker: Flower 1.42 only)")
    args = ap.parse_args()
    base = [f"device={args.device}", f"train.rounds={args.rounds}", "train.eval_every=1", "train.checkpoint_every=0",
            *args.overrides]
    cfg = load_config(args.config, base)
    out = []
    t = time.perf_counter()
    out.append(summarize("built-in", Simulation(cfg).run(), "clients_train_s"))
    print(f"built-in done in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    from brmtrl.flower.deploy import deploy_local
    from brmtrl.flower.simulation import run_flower_simulation

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = run_flower_simulation(cfg.replace(flower__backend_cpus=1), Path(tmp) / "sim")
        out.append(summarize("Flower simulation (Ray, 1 ClientApp at a time)", res, "clients_train_s"))
        print(f"simulation done in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        t = time.perf_counter()
        res = deploy_local(cfg, Path(tmp) / "deploy", supernodes=args.supernodes, timeout=3 * 3600)
        out.append(summarize(f"deploy-local ({args.supernodes} SuperNodes)", res, "slowest_node_train_s"))
        print(f"deploy-local done in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        if not args.no_warm:
            t = time.perf_counter()
            res = deploy_local(cfg, Path(tmp) / "warm", supernodes=args.supernodes, timeout=3 * 3600, warm=True)
            out.append(summarize(f"deploy-local, warm ClientApp ({args.supernodes} SuperNodes)", res,
                                 "slowest_node_train_s"))
            print(f"deploy-local (warm) done in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    print(f"`python benchmarks/engines.py --config {args.config} --rounds {args.rounds}"
          + "".join(f" --set {o}" for o in args.overrides) + "`")
    print(f"\n{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs, "
          f"torch threads {__import__('torch').get_num_threads()}; rounds averaged: "
          f"{max(args.rounds - 1, 1)} (the first left out)\n")
    print("| engine | round (s) | clients' training (s) | aggregation (s) | Flower overhead (s) | overhead / round "
          "| honest accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rnd, train, agg, over, frac, acc in out:
        print(f"| {name} | {rnd:.3f} | {train:.3f} | {agg:.4f} | {over:.3f} | {frac:.1%} | {acc:.4f} |")


if __name__ == "__main__":
    main()
