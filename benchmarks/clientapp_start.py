"""What a fresh ``flwr-clientapp`` process pays before it trains (issue 20): imports and the node's build.

Flower 1.41 and 1.42 start one ``flwr-clientapp`` process per message (a round of deploy-local sends a train
and, when evaluated, an evaluate message to every SuperNode). Each such process imports torch, Flower and
brmtrl's ClientApp, then builds the node (its clients' data and the model) before it trains. This script
times those two parts in fresh processes, ``--repeats`` times per config (median):

    python benchmarks/clientapp_start.py [--repeats 3] [--root ../shared/data/cifar10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch, flwr
import brmtrl.flower.client_app
t1 = time.perf_counter()
from brmtrl.config import load_config
from brmtrl.flower.node import Node
cfg = load_config(sys.argv[1], sys.argv[2:])
t2 = time.perf_counter()
Node(cfg, 0)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "node_s": t3 - t2}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    args = ap.parse_args()
    configs = {"quick": [str(ROOT / "configs" / "quick.toml"), "device=cpu"],
               "cifar10": [str(ROOT / "configs" / "cifar10.toml"), "device=cpu", f"dataset.root={args.root}"]}
    print(f"# clientapp_start — python {sys.version.split()[0]}\n")
    print(f"command: python benchmarks/clientapp_start.py --repeats {args.repeats} --root {args.root}\n")
    print("| config | import torch + flwr + brmtrl's ClientApp (s) | build the node: data + model (s) | per message (s) |")
    print("|---|---:|---:|---:|")
    for name, argv in configs.items():
        runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                                          check=True, cwd=ROOT).stdout.strip().splitlines()[-1])
                for _ in range(args.repeats)]
        imp = statistics.median(r["import_s"] for r in runs)
        node = statistics.median(r["node_s"] for r in runs)
        print(f"| {name} | {imp:.2f} | {node:.2f} | {imp + node:.2f} |", flush=True)


if __name__ == "__main__":
    main()
