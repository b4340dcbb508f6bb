"""Training-batch augmentation for image datasets, vectorised over a batch (``dataset.augment``).

What ``dataset.augment = true`` does, per dataset (:func:`augmentation_for`):

* CIFAR-10: FedRep's training transform, ``RandomCrop(32, padding=4)`` then ``RandomHorizontalFlip()``
  on the raw image, before normalisation: a random 32×32 crop of the image padded by 4 black pixels,
  then a horizontal flip with probability 1/2. Images are stored normalised, so the padding uses the
  value black takes after normalisation, channel by channel; the result equals cropping the raw image
  and then normalising.
* FEMNIST: the same random crop (padding 4, padded with the background value, 0 once the loader has
  inverted the pixels), without flipping, since a mirrored character is not the same character.
* Synthetic datasets (not images): no augmentation; the setting has no effect.

Offsets and flips are drawn per sample from the CPU generator passed in, so the draws are the same
on every device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from .federated import FederatedData

__all__ = ["AUGMENTATION_KEY", "Augmentation", "augmentation_for", "random_crop_flip"]

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

#: ``FederatedData.extras[AUGMENTATION_KEY]`` is ``{"fill": per-channel pad values, "hflip": bool}``;
#: the image loaders set it, since they know the value range and whether mirroring keeps the label.
AUGMENTATION_KEY = "augmentation"


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4,
                     fill: float | Sequence[float] = 0.0, flip: bool = True) -> torch.Tensor:
    """``x``: (B, C, H, W). Pads every image by ``padding`` with ``fill`` (one value, or one per
    channel), takes a random H×W crop and, if ``flip``, mirrors it horizontally with probability 1/2.

    Draws, in this order, from ``generator`` (a CPU generator): B row offsets, B column offsets, and
    B flip coins when ``flip``."""
    b, c, h, w = x.shape
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if fill_t.numel() not in (1, c):
        raise ValueError(f"fill has {fill_t.numel()} values; expected 1 or one per channel ({c})")
    padded = x.new_empty(b, c, h + 2 * padding, w + 2 * padding)
    padded.copy_(fill_t.view(1, -1, 1, 1).expand_as(padded))
    padded[:, :, padding:padding + h, padding:padding + w] = x
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)[None, :]  # (B, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)[None, :]  # (B, W)
    if flip:
        coin = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        cols = torch.where(coin[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def augmentation_for(data: FederatedData, enabled: bool) -> Augmentation | None:
    """The augmentation ``dataset.augment = enabled`` applies to ``data``'s training batches, or None.

    Image datasets whose loader described their augmentation in ``extras[AUGMENTATION_KEY]`` get a
    random crop padded with that fill, flipped only when ``hflip`` (CIFAR-10: crop + flip, padded
    with normalised black; FEMNIST: crop only, padded with the background). Other 4-D image data
    (built by hand, without that entry) get crop + flip with zero padding. Non-image data get None.
    """
    if not enabled or data.train_x.dim() != 4:
        return None
    spec = data.extras.get(AUGMENTATION_KEY)
    if spec is None:
        return random_crop_flip
    return partial(random_crop_flip, fill=tuple(float(v) for v in spec["fill"]), flip=bool(spec["hflip"]))
