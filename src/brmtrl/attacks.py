"""Byzantine attacks: pure functions from the updates Byzantine clients computed honestly to what
they send. Each takes ``byzantine`` (b, d) and ``honest`` (h, d) stacked updates (deltas of φ) and a
CPU ``torch.Generator``; hyperparameters are keyword-only. ``label_flip`` acts on the data instead
(:func:`flip_labels`) and sends its update unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["ATTACKS", "OMNISCIENT", "flip_labels", "is_omniscient", "gaussian", "label_flip", "none", "random", "sign_flip"]


def none(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """No attack: Byzantine clients behave honestly."""
    return byzantine


def gaussian(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator,
             sigma: float = 1.0) -> torch.Tensor:
    """Noisy update: u + σ ε, ε ~ N(0, I) (the Gaussian attack of Li et al., AAAI 2019)."""
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


#: config name -> (callable, the config keys ``attack.*`` it takes)
ATTACKS: dict[str, tuple[Callable[..., torch.Tensor], tuple[str, ...]]] = {
    "none": (none, ()),
    "gaussian": (gaussian, ("sigma",)),
    "sign_flip": (sign_flip, ("scale",)),
    "random": (random, ("magnitude",)),
    "label_flip": (label_flip, ()),
}

#: attacks that need the honest updates of the round (applied in the server step, in simulation only)
OMNISCIENT: frozenset[str] = frozenset()


def is_omniscient(name: str) -> bool:
    """Whether attack ``name`` reads the honest clients' updates of the round."""
    return name in OMNISCIENT
