"""Mini-batch SGD with momentum and weight decay: ``torch.optim.SGD``'s update, step for step.

Why not ``torch.optim.SGD`` itself: its methods are wrapped to keep TorchDynamo out, and the first call of
such a method imports ``torch._dynamo``, about 1.2 s of CPU in every process that trains. A federation
pays it in each process that runs clients (Flower's default isolation starts one per message), a sweep
in each worker, the test suite in every CLI it starts. The update below is the one
``torch.optim.SGD(params, lr, momentum, weight_decay)`` makes (dampening 0, no Nesterov), by the same
tensor operations in the same order, so the two give identical numbers (``tests/test_sgd.py``):

    d = g + λ·w;   b = d at a parameter's first step, then b = μ·b + d;   w ← w − η·b   (μ = 0: b = d)

A parameter whose gradient is ``None`` is left alone, as ``torch.optim`` leaves it.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["SGD"]


class SGD:
    """``torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)``'s ``zero_grad`` and
    ``step``, without importing TorchDynamo."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.params = list(params)
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD needs lr, momentum and weight_decay >= 0, got {lr}, {momentum}, {weight_decay}")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = p.grad
            if self.weight_decay != 0:
                d = d.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = d.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(d)
                d = buf
            p.add_(d, alpha=-self.lr)
