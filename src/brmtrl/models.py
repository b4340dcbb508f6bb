"""Built-in models, each split into a shared representation ``rep`` (φ) and a private ``head``.

A :class:`SplitModel` names its head by construction: every parameter under ``head.`` is private,
every parameter under ``rep.`` is the representation shared through the server.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SplitModel", "build_model", "cnn_cifar", "cnn_femnist", "linear", "linear_representation", "mlp"]


class SplitModel(nn.Module):
    """``head(rep(x))``: ``rep`` is every layer but the last, ``head`` is the last layer."""

    def __init__(self, rep: nn.Module, head: nn.Linear):
        super().__init__()
        self.rep = rep
        self.head = head
        self.channels_last = False
        self.top_layers = 2  # LG-FedAvg's shared layers, head included (see brmtrl.split)

    def use_channels_last(self, flag: bool = True) -> "SplitModel":
        """Keep convolution weights and image batches in NHWC layout (``torch.channels_last``):
        on CPUs (oneDNN) and recent GPUs the same convolutions run markedly faster."""
        self.channels_last = flag
        self.to(memory_format=torch.channels_last if flag else torch.contiguous_format)  # type: ignore[call-overload]
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x)."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.rep(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    @property
    def out_dim(self) -> int:
        return self.head.out_features


def _lenet(in_channels: int, width: tuple[int, int], spatial: int, hidden: tuple[int, int], num_classes: int) -> SplitModel:
    """conv in→w1 5×5, ReLU, pool 2, conv w1→w2 5×5, ReLU, pool 2, fc →h1→h2 (ReLU each) as φ; head h2→C."""
    side = ((spatial - 4) // 2 - 4) // 2
    rep = nn.Sequential(
        nn.Conv2d(in_channels, width[0], 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width[0], width[1], 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(width[1] * side * side, hidden[0]), nn.ReLU(),
        nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
    )
    return SplitModel(rep, nn.Linear(hidden[1], num_classes))


def cnn_cifar(num_classes: int = 10) -> SplitModel:
    """FedRep's CIFAR-10 CNN: conv 3→64 5×5, pool, conv 64→64 5×5, pool, fc 1600→120→64, head 64→C."""
    return _lenet(3, (64, 64), 32, (120, 64), num_classes)


def cnn_femnist(num_classes: int = 62) -> SplitModel:
    """A LeNet-style FEMNIST CNN on 1×28×28: conv 1→32 5×5, pool, conv 32→64 5×5, pool, fc 1024→256→128, head 128→C."""
    return _lenet(1, (32, 64), 28, (256, 128), num_classes)


def mlp(in_dim: int, out_dim: int, hidden: int = 64, rep_dim: int = 32) -> SplitModel:
    """Two hidden layers as φ (in→hidden→rep_dim), a linear head rep_dim→out."""
    rep = nn.Sequential(
        nn.Flatten(), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, rep_dim), nn.ReLU()
    )
    return SplitModel(rep, nn.Linear(rep_dim, out_dim))


def linear(in_dim: int, out_dim: int, rep_dim: int) -> SplitModel:
    """The linear MTRL model: φ(x) = Bᵀx with B ∈ R^{d×k} (no bias), head w_i ∈ R^{k×out}."""
    rep = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, rep_dim, bias=False))
    return SplitModel(rep, nn.Linear(rep_dim, out_dim, bias=False))


def linear_representation(model: SplitModel) -> torch.Tensor | None:
    """B ∈ R^{d×k} when φ is linear (φ(x) = Bᵀx, the linear MTRL model), else None."""
    layers = [m for m in model.rep.children() if not isinstance(m, nn.Flatten)]
    if len(layers) == 1 and isinstance(layers[0], nn.Linear) and layers[0].bias is None:
        return layers[0].weight.detach().T
    return None


def build_model(name: str, *, input_shape: tuple[int, ...], out_dim: int, hidden: int = 64,
                rep_dim: int = 0, default: str = "mlp") -> SplitModel:
    """Build a model by config name; ``auto`` takes the dataset's ``default``."""
    name = default if name == "auto" else name
    in_dim = 1
    for s in input_shape:
        in_dim *= s
    if name == "cnn_cifar":
        return cnn_cifar(out_dim)
    if name == "cnn_femnist":
        return cnn_femnist(out_dim)
    if name == "mlp":
        return mlp(in_dim, out_dim, hidden, rep_dim or 32)
    if name == "linear":
        return linear(in_dim, out_dim, rep_dim or 4)
    raise ValueError(f"unknown model {name!r}")
