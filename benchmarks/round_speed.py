"""One round of the paper's CIFAR-10 setting: brmtrl's local updates against the straightforward loop.

10 sampled clients x (10 head epochs + 1 representation epoch), batch 10, FedRep's CNN, same seeds,
both measured in this run, with augmentation off and on. Also prints the bound: the FLOPs of the
work no implementation can skip (one forward pass of φ per head-epoch input set, and the φ epochs'
forward + backward at batch 10) divided by the throughput measured here.

    python benchmarks/round_speed.py [--root ../shared/data/cifar10] [--repeats 2] [--device auto]

On a GPU (``--device auto`` takes CUDA when present) every timing synchronises the device first.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reference import reference_local_update  # noqa: E402
from brmtrl.config import load_config  # noqa: E402
from brmtrl.client import client_generator  # noqa: E402
from brmtrl.data import load_data  # noqa: E402
from brmtrl.device import synchronize  # noqa: E402
from brmtrl.engine import Simulation  # noqa: E402
from brmtrl.split import get_flat, set_flat  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10.toml"


def forward_flops(model: nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
    """(FLOPs of φ's forward, FLOPs of the whole model's forward) per sample, counting multiply-adds as 2."""
    counts = {"rep": 0.0, "head": 0.0}

    def hook(name):
        def f(mod, inp, out):
            if isinstance(mod, nn.Conv2d):
                k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                counts[name] += 2.0 * k * out.numel()
            elif isinstance(mod, nn.Linear):
                counts[name] += 2.0 * mod.in_features * out.numel()
        return f

    hs = [m.register_forward_hook(hook("rep")) for m in model.rep.modules()]
    hs.append(model.head.register_forward_hook(hook("head")))
    with torch.no_grad():
        model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    for h in hs:
        h.remove()
    return counts["rep"], counts["rep"] + counts["head"]


def throughput(model: nn.Module, x: torch.Tensor, y: torch.Tensor, f_rep: float, f_all: float) -> tuple[float, float]:
    """Best FLOP/s of φ's no-grad forward (batch 50 to 500) and of a training step (fwd+bwd+SGD) at batch 10."""
    fwd = 0.0
    with torch.no_grad():
        for bs in (50, 100, 250, 500):
            model.features(x[:bs])
            synchronize(x.device)
            t = time.perf_counter()
            for s in range(0, 500, bs):
                model.features(x[s:s + bs])
            synchronize(x.device)
            fwd = max(fwd, 500 * f_rep / (time.perf_counter() - t))
    opt = torch.optim.SGD(model.rep.parameters(), lr=0.0)
    steps = 100
    t = time.perf_counter()
    for s in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[s * 10 % 490:][:10]), y[s * 10 % 490:][:10]).backward()
        opt.step()
    synchronize(x.device)
    train = steps * 10 * 3 * f_all / (time.perf_counter() - t)  # fwd+bwd ≈ 3 × fwd
    return fwd, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="auto", help="the config's device setting (auto: CUDA when present)")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"# round_speed — torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"command: python benchmarks/round_speed.py --root {args.root} --repeats {args.repeats} "
          f"--device {args.device}\n")
    base = load_config(CONFIG, [f"dataset.root={args.root}", f"device={args.device}", "attack.name=none"])
    data = load_data(base)
    rows = []
    for augment in (False, True):
        cfg = base.replace(dataset__augment=augment)
        sims = {fmt: Simulation(cfg.replace(model__memory_format=fmt), data=data) for fmt in ("contiguous", "channels_last")}
        sim = sims["contiguous"]
        ref_model = copy.deepcopy(sim.model)  # plain NCHW, as a straightforward loop would have it
        clients = sim.sample_clients(1)
        phi0, heads0 = sim.shared.clone(), sim.private.clone()
        n_samples = sum(len(data.train_idx[c]) for c in clients)
        dev = sim.device
        print(f"device: {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
        times: dict[str, list[float]] = {"ref": [], "contiguous": [], "channels_last": []}
        deltas = {}
        for rep in range(args.repeats):
            synchronize(dev)
            t = time.perf_counter()
            ref_deltas = []
            for c in clients:
                set_flat(ref_model, "rep", phi0)
                set_flat(ref_model, "head", heads0[c])
                x, y = sim.data.client_train(c)
                reference_local_update(ref_model, x, y, head_epochs=cfg["train.head_epochs"],
                                       rep_epochs=cfg["train.rep_epochs"], lr=cfg["train.lr"],
                                       momentum=cfg["train.momentum"], weight_decay=cfg["train.weight_decay"],
                                       batch_size=cfg["train.batch_size"], generator=client_generator(cfg["seed"], 1, c),
                                       augment=sim.augment if augment else None)
                ref_deltas.append(get_flat(ref_model, "rep") - phi0)
            synchronize(dev)
            times["ref"].append(time.perf_counter() - t)
            for fmt, s in sims.items():
                s.shared, s.private = phi0.clone(), heads0.clone()
                t = time.perf_counter()
                deltas[fmt] = torch.stack([res.delta for res in s.local_updates(clients, 1)])
                synchronize(dev)
                times[fmt].append(time.perf_counter() - t)
        diff = max(float((torch.stack(ref_deltas) - d).abs().max()) for d in deltas.values())
        f_rep, f_all = forward_flops(sim.model, data.input_shape)
        x, y = sim.data.client_train(clients[0])
        thr = [throughput(s.model, x, y, f_rep, f_all) for s in sims.values()]
        thr_fwd, thr_train = max(t[0] for t in thr), max(t[1] for t in thr)
        feature_passes = cfg["train.head_epochs"] if augment else 1
        bound = (feature_passes * n_samples * f_rep / thr_fwd
                 + cfg["train.rep_epochs"] * n_samples * 3 * f_all / thr_train)
        r, fc, fl = min(times["ref"]), min(times["contiguous"]), min(times["channels_last"])
        rows.append((augment, r, fc, fl, r / fl, bound, fl / bound, diff, thr_fwd, thr_train))
    print("| augmentation | straightforward loop (s) | brmtrl, NCHW (s) | brmtrl (s) | speed-up | bound (s) | brmtrl / bound | max abs diff of φ deltas | φ fwd GFLOP/s | train GFLOP/s @10 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for a, r, fc, fl, s, b, fb, d, t1, t2 in rows:
        print(f"| {'on' if a else 'off'} | {r:.2f} | {fc:.2f} | {fl:.2f} | **{s:.2f}x** | {b:.2f} | {fb:.2f} | {d:.1e} | {t1/1e9:.1f} | {t2/1e9:.1f} |")
    print(f"\n(best of {args.repeats}; 10 clients, {n_samples} samples, FedRep CNN: φ forward "
          f"{f_rep/1e6:.1f} MFLOP/sample, fwd+bwd ≈ 3 × {f_all/1e6:.1f} MFLOP/sample)")


if __name__ == "__main__":
    main()
