"""Soak: a long synthetic run with attacks, watching the process's memory.

    python benchmarks/soak.py [--rounds 500]

Runs configs/quick.toml for 500 rounds with 20 % sign-flipping clients and the geometric median,
recording resident memory (current and peak, from /proc and getrusage) at rounds 1, 50, 100, 250
and 500. Memory that grows with the round count would show as a rising peak after round 50.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brmtrl.config import load_config  # noqa: E402
from brmtrl.engine import Simulation  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quick.toml"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--attack", default="sign_flip")
    args = ap.parse_args()
    marks = sorted({1, 50, 100, 250, args.rounds} & set(range(1, args.rounds + 1)))
    rows = []

    class Watched(Simulation):
        def round(self, r):
            rec = super().round(r)
            if r in marks:
                rows.append((r, rss_mib(), peak_mib(), time.perf_counter() - t0))
            return rec

    cfg = load_config(CONFIG, [f"train.rounds={args.rounds}", f"attack.name={args.attack}", "device=cpu",
                               "train.eval_every=10"])
    t0 = time.perf_counter()
    res = Watched(cfg).run()
    print(f"command: python benchmarks/soak.py --rounds {args.rounds} --attack {args.attack}\n")
    print("| round | RSS (MiB) | peak RSS (MiB) | elapsed (s) |")
    print("| ---: | ---: | ---: | ---: |")
    for r, cur, peak, el in rows:
        print(f"| {r} | {cur:.1f} | {peak:.1f} | {el:.1f} |")
    print(f"\nfinal honest accuracy {res['final']['honest_acc_mean']:.4f}; "
          f"{len(res['history'])} evaluations kept in the history")


if __name__ == "__main__":
    main()
