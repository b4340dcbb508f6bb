"""Compare aggregators (and algorithms) on one config; prints a Markdown table of final honest accuracy.

    python experiments/compare.py configs/femnist.toml --set dataset.root=../shared/data/femnist \
        --aggregators mean geometric_median krum [--algorithms brmtrl] [--out runs/compare]

Each cell is one `brmtrl run` (same seed, same Byzantine clients); results.json of each run is kept
under --out.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from brmtrl.config import load_config  # noqa: E402
from brmtrl.data import load_data  # noqa: E402
from brmtrl.engine import Simulation  # noqa: E402
from brmtrl.report import write_outputs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--aggregators", nargs="+", default=["mean", "geometric_median", "krum"])
    ap.add_argument("--algorithms", nargs="+", default=["brmtrl"])
    ap.add_argument("--out", default="runs/compare")
    args = ap.parse_args()
    print("command: python experiments/compare.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "\n")
    base = load_config(args.config, args.overrides)
    data = load_data(base)
    print(f"{base['dataset.name']}, {base['dataset.num_clients']} clients, {base['train.rounds']} rounds, "
          f"attack {base['attack.name']} on {base['attack.byzantine_fraction']:.0%} of clients\n")
    print("| algorithm | aggregator | honest acc mean | std | min | s/round |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for algo in args.algorithms:
        for agg in args.aggregators:
            cfg = base.replace(algorithm__name=algo, aggregator__name=agg)
            out = Path(args.out) / f"{algo}-{agg}"
            res = Simulation(cfg, data=data, out_dir=out).run()
            write_outputs(out, res)
            f = res["final"]
            print(f"| {algo} | {agg} | {f['honest_acc_mean']:.4f} | {f['honest_acc_std']:.4f} | "
                  f"{f['honest_acc_min']:.4f} | {res['timing']['per_round_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
