"""Attacks that need nothing but the Byzantine client's own update (or nothing at all): what a real
Byzantine node can do on its own. ``label_flip`` acts on the data instead (:func:`flip_labels`) and
sends its update unchanged; ``nan`` and ``inf`` send non-finite values (the server step must reject
them, never crash on them).
"""

from __future__ import annotations

import torch

__all__ = ["flip_labels", "gaussian", "gaussian_additive", "inf", "label_flip", "nan", "none", "random", "sign_flip"]


def none(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """No attack: Byzantine clients behave honestly."""
    return byzantine


def gaussian(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
             sigma: float = 1.0) -> torch.Tensor:
    """Gaussian attack: send pure noise σ ε, ε ~ N(0, I), independent of the update the client
    computed (Li et al., AAAI 2019, the "Gaussian" Byzantine worker; ByzFL's ``Gaussian`` with μ = 0)."""
    noise = torch.randn(byzantine.shape, generator=generator, dtype=byzantine.dtype)
    return (sigma * noise).to(byzantine.device)


def gaussian_additive(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
                      sigma: float = 1.0) -> torch.Tensor:
    """Noisy update: u + σ ε, ε ~ N(0, I): the honest update with Gaussian noise added (a weaker,
    stealthier variant of :func:`gaussian`; brmtrl's ``gaussian`` before 2026-12)."""
    noise = torch.randn(byzantine.shape, generator=generator, dtype=byzantine.dtype)
    return byzantine + sigma * noise.to(byzantine.device)


def sign_flip(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
              scale: float = 5.0) -> torch.Tensor:
    """Sign flipping: send −scale · u (Allen-Zhu et al., ICLR 2021 use scale 1; larger is stronger)."""
    return -scale * byzantine


def random(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
           magnitude: float = 1000.0) -> torch.Tensor:
    """Arbitrary values: each entry uniform in [−magnitude, magnitude], independent of the update."""
    u = torch.rand(byzantine.shape, generator=generator, dtype=byzantine.dtype)
    return ((2.0 * u - 1.0) * magnitude).to(byzantine.device)


def label_flip(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Label flipping poisons the data (:func:`flip_labels`); the update is sent as computed."""
    return byzantine


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The fixed permutation y → C − 1 − y used by label-flipping clients."""
    return num_classes - 1 - y


def nan(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Send NaN in every coordinate (a crashed or hostile node); the server step rejects it."""
    return torch.full_like(byzantine, float("nan"))


def inf(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Send +Inf in every coordinate; the server step rejects it."""
    return torch.full_like(byzantine, float("inf"))
