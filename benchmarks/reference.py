"""The straightforward BR-MTRL local update, kept as the reference for speed and correctness.

Per client, per epoch, per mini-batch SGD through the whole model: the head epochs push every
mini-batch through the frozen φ. It draws from each client's generator in the same order as the
library (permutation, then augmentation, per epoch), so both give the same parameters.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from brmtrl.losses import loss_fn


def reference_local_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, head_epochs: int, rep_epochs: int,
                           lr: float, momentum: float, weight_decay: float, batch_size: int,
                           generator: torch.Generator,
                           augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> None:
    model.train()
    for part, epochs in (("head", head_epochs), ("rep", rep_epochs)):
        params = []
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(part + "."))
            if p.requires_grad:
                params.append(p)
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=generator).to(y.device)
            xe, ye = x[perm], y[perm]
            if augment is not None:
                xe = augment(xe, generator)
            for s in range(0, len(ye), batch_size):
                opt.zero_grad(set_to_none=True)
                loss_fn(model(xe[s:s + batch_size]), ye[s:s + batch_size]).backward()
                opt.step()
    for p in model.parameters():
        p.requires_grad_(True)
