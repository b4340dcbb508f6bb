"""CIFAR-10 from parquet files in the ``uoft-cs/cifar10`` schema: a local copy (offline) or the hub's own
files, downloaded by :func:`~brmtrl.data.hub.fetch_parquet` (online); both are read by the same code.

Decoded uint8 arrays are cached (:mod:`brmtrl.data.cache`: under ``$BRMTRL_CACHE``, keyed by each parquet
file, decoded by one process at a time) and read back memory-mapped, so that a process that needs a few
clients' images (a Flower node: :func:`load_cifar10_arrays`) reads only those.

Images are normalised as FedRep normalises CIFAR-10: ImageNet's per-channel mean and standard
deviation (see ``CIFAR_MEAN``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .cache import cache_dir, cached_arrays, source_key
from .federated import DataError
from .hub import fetch_parquet

__all__ = ["HUB_ID", "load_cifar10", "load_cifar10_arrays", "normalise", "CIFAR_MEAN", "CIFAR_STD", "normalised_black"]

HUB_ID = "uoft-cs/cifar10"
# FedRep's CIFAR-10 normalisation, which is ImageNet's mean and std: github.com/lgcollins/FedRep,
# utils/train_utils.py (commit d82e629, lines 12-19), trans_cifar10_train = Compose([RandomCrop(32,
# padding=4), RandomHorizontalFlip(), ToTensor(), Normalize(mean=[0.485, 0.456, 0.406],
# std=[0.229, 0.224, 0.225])]) and trans_cifar10_val = Compose([ToTensor(), Normalize(same)]).
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "test")
EXPECTED_ROWS = {"train": 50_000, "test": 10_000}


def _decode(images: Iterable[bytes], where: str) -> np.ndarray:
    from PIL import Image

    out = []
    for k, data in enumerate(images):
        try:
            arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
        except Exception as exc:
            raise DataError(f"{where}: image {k} cannot be decoded ({exc}); expected JPEG/PNG bytes") from None
        if arr.shape != (32, 32, 3):
            raise DataError(f"{where}: image {k} has shape {arr.shape}; expected 32x32 RGB")
        out.append(arr)
    return np.stack(out)


def _read_parquet(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"CIFAR-10 file {str(path)!r} not found; expected train.parquet and test.parquet "
                        f"in the {HUB_ID} schema (columns img, label) under dataset.root")
    try:
        table = pq.read_table(path, columns=["img", "label"])
    except Exception as exc:
        raise DataError(f"CIFAR-10 file {str(path)!r} cannot be read as parquet with columns img, label "
                        f"({type(exc).__name__}: {exc})") from None
    labels = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    images = table.column("img").combine_chunks().field("bytes").to_pylist()
    x = _decode(images, f"CIFAR-10 file {str(path)!r}")
    return x, labels


def _check(x: np.ndarray, y: np.ndarray, where: str, split: str) -> None:
    if len(y) != EXPECTED_ROWS[split]:
        raise DataError(f"{where}: {len(y)} rows; the CIFAR-10 {split} split has {EXPECTED_ROWS[split]} "
                        "(file truncated?)")
    if y.min() < 0 or y.max() > 9:
        raise DataError(f"{where}: labels outside 0..9")


def normalise(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W), in place after the one float copy."""
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return t.div_(255.0).sub_(mean).div_(std)


def normalised_black() -> tuple[float, float, float]:
    """The value, per channel, that a black pixel (0) takes after :func:`load_cifar10`'s normalisation
    (computed in float32 as the images are, so it is exactly what a black pixel becomes)."""
    return tuple(normalise(np.zeros((1, 1, 1, 3), dtype=np.uint8)).view(3).tolist())  # type: ignore[return-value]


def _read_file(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One parquet file's (x, y), decoded once and then read from the cache (:mod:`brmtrl.data.cache`)."""
    stem = cache_dir() / f"cifar10-{split}-{source_key([path])}"
    arrays = cached_arrays(stem, ("y", "x"), lambda: dict(zip(("x", "y"), _read_parquet(path))),
                           valid=lambda a: a["x"].ndim == 4 and len(a["x"]) == len(a["y"]))
    return arrays["x"], arrays["y"]


def _read_split(files: list[Path], split: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A split from its parquet file(s) (the hub may shard a split), checked for its size and labels."""
    parts = [_read_file(f, split) for f in files]
    x, y = parts[0] if len(parts) == 1 else (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    _check(x, y, where, split)
    return x, y


def _load_local(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not root.is_dir():
        raise DataError(f"dataset.root {str(root)!r} is not a directory; expected a folder holding "
                        "CIFAR-10's train.parquet and test.parquet")
    out = {}
    for split in SPLITS:
        path = root / f"{split}.parquet"
        if not path.is_file():
            raise DataError(f"CIFAR-10 file {str(path)!r} not found; expected train.parquet and test.parquet "
                            f"in the {HUB_ID} schema under dataset.root")
        out[split] = _read_split([path], split, f"CIFAR-10 file {str(path)!r}")
    return out


def _load_online() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The hub's parquet files of :data:`HUB_ID` (``plain_text/<split>-*.parquet``), read and cached as a
    local copy is."""
    return {split: _read_split(fetch_parquet(HUB_ID, f"plain_text/{split}-*.parquet", "CIFAR-10", "../shared/data/cifar10"),
                               split, f"{HUB_ID} ({split})")
            for split in SPLITS}


def load_cifar10_arrays(root: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (x, y), "test": (x, y)}``: uint8 images (N, 32, 32, 3) (memory-mapped from the cache when
    read from ``root``) and int64 labels, before normalisation (:func:`normalise` turns rows of x into
    the tensors :func:`load_cifar10` returns)."""
    return _load_local(Path(root)) if root else _load_online()


def load_cifar10(root: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, test_x, test_y), images (N, 3, 32, 32) normalised with FedRep's (ImageNet's)
    per-channel mean and std, ``(pixel / 255 - CIFAR_MEAN) / CIFAR_STD``: values in about [-2.1, 2.6]."""
    arrays = load_cifar10_arrays(root)
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    return normalise(xtr), torch.from_numpy(ytr.copy()), normalise(xte), torch.from_numpy(yte.copy())
