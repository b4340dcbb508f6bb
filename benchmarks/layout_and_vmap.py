"""Two design choices of the fast path, measured: the memory layout of FedRep's CNN, and batching the
φ epochs of several clients with ``torch.func.vmap``.

    python benchmarks/layout_and_vmap.py

1. φ forward (no grad) throughput at several batch sizes, NCHW against NHWC (channels_last).
2. One φ SGD step (forward + backward, head frozen) at batch 10: 10 clients one after another against
   the 10 clients vmapped together (grad of functional_call), NCHW.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brmtrl.models import cnn_cifar  # noqa: E402

FWD_FLOPS = 28.4e6  # φ forward per 32×32 image, counted in benchmarks/round_speed.py


def best(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    print(f"command: python benchmarks/layout_and_vmap.py  (torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    x = torch.randn(2000, 3, 32, 32)
    print("| φ forward batch | NCHW GFLOP/s | NHWC GFLOP/s |")
    print("| ---: | ---: | ---: |")
    nchw = cnn_cifar(10).eval()
    nhwc = cnn_cifar(10).eval().use_channels_last()
    xl = x.contiguous(memory_format=torch.channels_last)
    for bs in (10, 50, 100, 250, 500):
        def run(model, data):
            with torch.inference_mode():
                for s in range(0, len(data), bs):
                    model.features(data[s:s + bs])
        a = best(lambda: run(nchw, x))
        b = best(lambda: run(nhwc, xl))
        print(f"| {bs} | {len(x) * FWD_FLOPS / a / 1e9:.1f} | {len(x) * FWD_FLOPS / b / 1e9:.1f} |")

    m, steps, bs = 10, 20, 10
    xs = torch.randn(m, steps * bs, 3, 32, 32)
    ys = torch.randint(0, 10, (m, steps * bs))
    model = cnn_cifar(10)

    def sequential():
        for c in range(m):
            for p in model.head.parameters():
                p.requires_grad_(False)
            opt = torch.optim.SGD(model.rep.parameters(), lr=0.01)
            for s in range(steps):
                opt.zero_grad()
                F.cross_entropy(model(xs[c, s * bs:(s + 1) * bs]), ys[c, s * bs:(s + 1) * bs]).backward()
                opt.step()

    rep = {n: p.detach().unsqueeze(0).repeat(m, *[1] * p.dim()) for n, p in model.named_parameters() if n.startswith("rep.")}
    head = {n: p.detach().unsqueeze(0).repeat(m, *[1] * p.dim()) for n, p in model.named_parameters() if n.startswith("head.")}

    def loss(r, h, xb, yb):
        return F.cross_entropy(functional_call(model, {**r, **h}, (xb,)), yb)

    step = vmap(grad(loss))

    def batched():
        for s in range(steps):
            g = step(rep, head, xs[:, s * bs:(s + 1) * bs], ys[:, s * bs:(s + 1) * bs])
            for n in rep:
                rep[n].sub_(0.01 * g[n])

    a, b = best(sequential, 2), best(batched, 2)
    print(f"\n| φ step, batch 10, {m} clients | ms per client-step |")
    print("| --- | ---: |")
    print(f"| one client after another | {a / (m * steps) * 1e3:.1f} |")
    print(f"| vmapped across clients | {b / (m * steps) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
