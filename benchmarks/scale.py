"""Scale: CIFAR-10 with 100, 300 and 1000 clients (5 classes each), one process per setting.

    python benchmarks/scale.py [--root ../shared/data/cifar10] [--rounds 2]

For each number of clients N it runs the paper's local update (10 head + 1 φ epochs, batch 10, no
augmentation) for a few rounds twice: with 10 % participation (sampled clients grow with N) and
with 10 clients sampled whatever N. It reports the mean round time (local updates + aggregation,
evaluation excluded) and the peak resident memory of the process (data loading included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from brmtrl.config import load_config
from brmtrl.engine import Simulation
n, sampled, rounds, root = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cfg = load_config(sys.argv[5], [f"dataset.root={root}", f"dataset.num_clients={n}", "dataset.classes_per_client=5",
                                f"train.participation={sampled / n}", f"train.rounds={rounds}", "dataset.augment=false",
                                "train.eval_every=1000", "train.checkpoint_every=0", "device=cpu", "attack.name=none"])
sim = Simulation(cfg)
res = sim.run()
print(json.dumps({"per_round_s": res["timing"]["per_round_s"], "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "sampled": sim.num_sampled, "train_per_client": res["data"]["train_samples"] / n,
                  "trained_per_round": sum(len(sim.data.train_idx[c]) for c in sim.sample_clients(1))}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(f"command: python benchmarks/scale.py --root {args.root} --rounds {args.rounds}\n")
    print("| clients N | sampled per round | mean samples per client | samples trained in round 1 | round time (s) | peak RSS (MiB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in (100, 300, 1000):
        for sampled in sorted({10, n // 10}):
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(sampled), str(args.rounds), args.root,
                                  str(ROOT / "configs" / "cifar10.toml")], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {n} | {r['sampled']} | {r['train_per_client']:.0f} | {r['trained_per_round']} | {r['per_round_s']:.2f} | "
                  f"{r['peak_mib']:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
