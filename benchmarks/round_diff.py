"""Where the paper round's φ deltas differ from the straightforward loop's, client by client and layout by
layout: the largest entry of |loop − brmtrl| for brmtrl in NCHW (``model.memory_format=contiguous``) and in
channels-last (NHWC, the default on the CPU), the loop (``benchmarks/reference.py``) in NCHW, augmentation off,
the same seeds; ``round_speed.py`` prints only the largest of them all.

    python benchmarks/round_diff.py [--root ../shared/data/cifar10]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reference import reference_local_update  # noqa: E402
from brmtrl.client import client_generator  # noqa: E402
from brmtrl.config import load_config  # noqa: E402
from brmtrl.data import load_data  # noqa: E402
from brmtrl.engine import Simulation  # noqa: E402
from brmtrl.split import get_flat, set_flat  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="../shared/data/cifar10", help="CIFAR-10's parquet files")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(CONFIG, [f"dataset.root={args.root}", "device=cpu", "attack.name=none", "dataset.augment=false"])
    data = load_data(cfg)
    sims = {fmt: Simulation(cfg.replace(model__memory_format=fmt), data=data) for fmt in ("contiguous", "channels_last")}
    loop = copy.deepcopy(sims["contiguous"].model)
    clients = sims["contiguous"].sample_clients(1)
    phi0, heads0 = sims["contiguous"].shared.clone(), sims["contiguous"].private.clone()
    fast = {fmt: torch.stack([res.delta for res in s.local_updates(clients, 1)]) for fmt, s in sims.items()}
    print(f"`python benchmarks/round_diff.py --root {args.root}` — torch {torch.__version__}, 2 threads\n")
    print("| client | max abs diff, brmtrl NCHW | max abs diff, brmtrl NHWC | max abs entry of the loop's φ delta |")
    print("| ---: | ---: | ---: | ---: |")
    for i, c in enumerate(clients):
        set_flat(loop, "rep", phi0)
        set_flat(loop, "head", heads0[c])
        x, y = sims["contiguous"].data.client_train(c)
        reference_local_update(loop, x, y, head_epochs=cfg["train.head_epochs"], rep_epochs=cfg["train.rep_epochs"],
                               lr=cfg["train.lr"], momentum=cfg["train.momentum"], weight_decay=cfg["train.weight_decay"],
                               batch_size=cfg["train.batch_size"], generator=client_generator(cfg["seed"], 1, c),
                               augment=None)
        d = get_flat(loop, "rep") - phi0
        diffs = [float((d - fast[fmt][i]).abs().max()) for fmt in ("contiguous", "channels_last")]
        print(f"| {c} | {diffs[0]:.1e} | {diffs[1]:.1e} | {float(d.abs().max()):.1e} |")


if __name__ == "__main__":
    main()
