"""Local training: what a client runs for the phases of its local update rule (:mod:`brmtrl.local_rules`,
re-exported here: which part it trains, in which order, and what it sends).

Training itself is :func:`train_phases`: plain mini-batch SGD. While φ is frozen, a head phase
computes φ's features once per epoch (once in all when there is no augmentation) in no-grad batches
and runs the head's SGD on them: the same arithmetic as pushing every mini-batch through the frozen
φ, without doing φ's forward pass ``head_epochs`` times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .head_sgd import EpochData, head_sgd_batched
from .local_rules import RULES, LocalRule, complement, register_local_rule, resolve_local_rule
from .losses import loss_fn
from .models import SplitModel
from .sgd import SGD
from .split import Part, freeze_all_but

__all__ = ["RULES", "LocalRule", "SGDSettings", "complement", "compute_features", "evaluate", "loss_fn",
           "register_local_rule", "resolve_local_rule", "sgd_epochs", "train_heads_together", "train_phases"]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class SGDSettings:
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SGDSettings":
        return cls(cfg["train.lr"], cfg["train.momentum"], cfg["train.weight_decay"], cfg["train.batch_size"])

    def optimizer(self, params: list[nn.Parameter]) -> SGD:
        """``torch.optim.SGD``'s update with these settings (:class:`~brmtrl.sgd.SGD`: the same numbers)."""
        return SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@torch.no_grad()
def compute_features(model: SplitModel, x: torch.Tensor) -> torch.Tensor:
    """φ(x) without gradients, in chunks (small on CPUs, where ~100-sample batches run fastest)."""
    chunk = 128 if x.device.type == "cpu" else 4096
    return torch.cat([model.features(x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else x


def _epoch_data(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                augment: Augment | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's samples in the order they are visited (and augmented, if asked)."""
    perm = torch.randperm(len(y), generator=generator).to(y.device)
    xe, ye = x[perm], y[perm]
    if augment is not None:
        xe = augment(xe, generator)
    return xe, ye


def sgd_epochs(module: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor,
               epochs: int, sgd: SGDSettings, generator: torch.Generator, augment: Augment | None,
               inputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
               prox: tuple[list[torch.Tensor], float] | None = None) -> None:
    """Mini-batch SGD on ``params`` of ``module`` for ``epochs`` on (x, y), visiting each epoch's samples in
    the order ``generator`` draws. ``inputs``: a map applied to each epoch's inputs (φ's features);
    ``prox = (anchor, λ)`` adds (λ/2) Σ ‖p − anchor‖² to each batch's loss (Ditto's proximal term)."""
    opt = sgd.optimizer(params)
    bs = sgd.batch_size
    for _ in range(epochs):
        xe, ye = _epoch_data(x, y, generator, augment)
        if inputs is not None:
            xe = inputs(xe)
        for start in range(0, len(ye), bs):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(module(xe[start:start + bs]), ye[start:start + bs])
            if prox is not None:
                anchor, lam = prox
                loss = loss + 0.5 * lam * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            loss.backward()
            opt.step()


def train_phases(model: SplitModel, x: torch.Tensor, y: torch.Tensor, phases: list[tuple[Part, int]],
                 sgd: SGDSettings, generator: torch.Generator, augment: Augment | None = None,
                 reuse_features: bool = True) -> None:
    """Run the phases in order on (x, y). ``reuse_features=False`` pushes every head mini-batch
    through the frozen φ (the straightforward reference; same result to float tolerance)."""
    if len(y) == 0:
        return
    model.train()
    for part, epochs in phases:
        if epochs == 0 or part == "none":
            continue
        params = freeze_all_but(model, part)
        if part == "head" and reuse_features:
            if augment is None:
                feats = compute_features(model, x)
                # visiting order must match the reference: permute features instead of inputs
                sgd_epochs(model.head, params, feats, y, epochs, sgd, generator, None)
            else:
                sgd_epochs(model.head, params, x, y, epochs, sgd, generator, augment,
                            inputs=lambda xe: compute_features(model, xe))
        else:
            sgd_epochs(model, params, x, y, epochs, sgd, generator, augment)
    for p in model.parameters():
        p.requires_grad_(True)


def _head_epochs(model: SplitModel, data: list[tuple[torch.Tensor, torch.Tensor]], generators: list[torch.Generator],
                 epochs: int, augment: Augment | None) -> Iterator[EpochData]:
    """Each epoch's features and targets per client, in visiting order. The draws from each client's
    generator (permutation, then augmentation) are those of :func:`train_phases`."""
    sizes = [len(y) for _, y in data]
    if augment is None:
        feats = compute_features(model, torch.cat([x for x, _ in data])).split(sizes)
    for _ in range(epochs):
        perms = [torch.randperm(n, generator=g).to(y.device) for n, g, (_, y) in zip(sizes, generators, data)]
        if augment is None:
            yield [f[p] for f, p in zip(feats, perms)], [y[p] for p, (_, y) in zip(perms, data)]
        else:
            xe = torch.cat([augment(x[p], g) for p, g, (x, _) in zip(perms, generators, data)])
            yield list(compute_features(model, xe).split(sizes)), [y[p] for p, (_, y) in zip(perms, data)]


def train_heads_together(model: SplitModel, data: list[tuple[torch.Tensor, torch.Tensor]], heads: torch.Tensor,
                         epochs: int, sgd: SGDSettings, generators: list[torch.Generator],
                         augment: Augment | None = None) -> torch.Tensor:
    """The head phase of several clients at once, with φ frozen: φ's features are computed in large
    no-grad batches (once, or once per epoch with augmentation) and every head steps together
    (:func:`brmtrl.head_sgd.head_sgd_batched`). ``heads`` holds one flat head per row, as
    :func:`brmtrl.split.get_flat` lays it out (weight, then bias); the trained heads are returned."""
    head = model.head
    c, k = head.out_features, head.in_features
    weight = heads[:, :c * k].reshape(-1, c, k).clone()
    bias = heads[:, c * k:].clone() if head.bias is not None else None
    model.eval()
    head_sgd_batched(_head_epochs(model, data, generators, epochs, augment), weight, bias,
                     lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay, batch_size=sgd.batch_size)
    parts = [weight.reshape(len(heads), -1)] + ([bias] if bias is not None else [])
    return torch.cat(parts, dim=1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """(accuracy, mean loss) on (x, y); accuracy is NaN for regression targets."""
    if len(y) == 0:
        return float("nan"), float("nan")
    model.eval()
    outs = torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    loss = float(loss_fn(outs, y))
    acc = float("nan") if y.is_floating_point() else float((outs.argmax(1) == y).float().mean())
    return acc, loss
