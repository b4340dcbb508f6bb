"""The model split: read and write a part of a model as one flat vector, freeze parts.

Parts: ``rep`` (φ, every layer but the last), ``head`` (the last layer), ``all``, ``none``, and for
LG-FedAvg ``top`` (the last ``model.top_layers`` parametrised layers, head included; FedRep's code
shares fc2 and fc3 of its CIFAR-10 CNN, i.e. ``top_layers = 2``) with ``bottom`` (the rest).
``top`` always leaves at least one layer in ``bottom``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["PARTS", "Part", "layers", "part_parameters", "part_size", "get_flat", "set_flat", "freeze_all_but"]

Part = Literal["rep", "head", "all", "none", "top", "bottom"]
PARTS = ("rep", "head", "all", "none", "top", "bottom")


def layers(model: nn.Module) -> list[list[nn.Parameter]]:
    """The parameters grouped by the leaf module that owns them, in registration order."""
    groups: list[list[nn.Parameter]] = []
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(True for _ in module.children()):
            groups.append(own)
    return groups


def _top_bottom(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    groups = layers(model)
    k = max(1, min(int(getattr(model, "top_layers", 2)), len(groups) - 1))
    top = [p for g in groups[len(groups) - k:] for p in g]
    bottom = [p for g in groups[:len(groups) - k] for p in g]
    return top, bottom


def part_parameters(model: nn.Module, part: Part) -> list[nn.Parameter]:
    """Parameters of ``part`` in a fixed order (registration order)."""
    if part == "all":
        return list(model.parameters())
    if part == "none":
        return []
    if part in ("top", "bottom"):
        top, bottom = _top_bottom(model)
        return top if part == "top" else bottom
    if part not in ("rep", "head"):
        raise ValueError(f"unknown model part {part!r}; expected one of {', '.join(PARTS)}")
    return [p for n, p in model.named_parameters() if n.split(".", 1)[0] == part]


def part_size(model: nn.Module, part: Part) -> int:
    return sum(p.numel() for p in part_parameters(model, part))


def get_flat(model: nn.Module, part: Part) -> torch.Tensor:
    """A detached copy of ``part`` as one flat vector."""
    params = part_parameters(model, part)
    if not params:
        return torch.empty(0)
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


@torch.no_grad()
def set_flat(model: nn.Module, part: Part, vector: torch.Tensor) -> None:
    """Write a flat vector (as produced by :func:`get_flat`) into ``part``."""
    params = part_parameters(model, part)
    total = sum(p.numel() for p in params)
    if vector.numel() != total:
        raise ValueError(f"vector has {vector.numel()} entries; part {part!r} has {total}")
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(vector[offset:offset + n].view_as(p))
        offset += n


def freeze_all_but(model: nn.Module, part: Part) -> list[nn.Parameter]:
    """Set ``requires_grad`` on ``part`` only; returns the trainable parameters."""
    trainable = {id(p) for p in part_parameters(model, part)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    return [p for p in model.parameters() if p.requires_grad]
