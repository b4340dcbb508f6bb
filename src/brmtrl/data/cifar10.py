"""CIFAR-10 from parquet files in the ``uoft-cs/cifar10`` schema: a local copy (offline) or the hub's own
files, downloaded by :func:`~brmtrl.data.hub.fetch_parquet` (online); both are read by the same code.

Decoded uint8 arrays are cached as ``.npy`` files beside nothing of the user's: under ``$BRMTRL_CACHE``
(default ``~/.cache/brmtrl``), keyed by each parquet file's path, size and modification time, and read back
memory-mapped, so that a process that needs a few clients' images (a Flower node:
:func:`load_cifar10_arrays`) reads only those. Each writer saves to its own temporary file (process id and
a random suffix in the name) and renames it into place, so concurrent runs never read or clobber a
half-written cache file; and one process at a time decodes a file (a lock file beside its cache), so that
processes starting together (a federation's nodes) decode it once, not once each.

Images are normalised as FedRep normalises CIFAR-10: ImageNet's per-channel mean and standard
deviation (see ``CIFAR_MEAN``).
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

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


def cache_dir() -> Path:
    return Path(os.environ.get("BRMTRL_CACHE", Path.home() / ".cache" / "brmtrl"))


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


def _temp_name(path: Path) -> Path:
    """A temporary file beside ``path``, unique to this process and call."""
    return path.with_name(f"{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


def _write_cache(path: Path, arr: np.ndarray) -> None:
    """Atomically write ``arr`` to ``path`` (``.npy``); caching is an optimisation only, so an unwritable
    cache is skipped, and the temporary file never outlives a failure."""
    tmp = _temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp, arr)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if not isinstance(exc, OSError):
            raise


def _read_cache(stem: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (x, y) of ``stem`` (x memory-mapped), or None when missing or unreadable."""
    try:
        x = np.load(stem.with_name(stem.name + ".x.npy"), mmap_mode="r")
        y = np.load(stem.with_name(stem.name + ".y.npy"))
    except (OSError, ValueError):
        return None
    return (x, y) if x.ndim == 4 and len(x) == len(y) else None


@contextmanager
def _one_decoder(stem: Path) -> Iterator[None]:
    """Held while this process decodes ``stem``'s file: a process that needs the same file meanwhile (the
    SuperNodes and the server of a federation starting together, parallel sweep cells) waits, then reads
    the cache, instead of decoding it again. No lock where the cache cannot be written or the platform
    has no ``fcntl`` (each process then decodes on its own, as before)."""
    try:
        import fcntl

        stem.parent.mkdir(parents=True, exist_ok=True)
        fh = open(stem.with_name(stem.name + ".lock"), "a")
    except (ImportError, OSError):
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_file(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One parquet file's (x, y): from the cache when this file (its real path, size and modification
    time: a symbolic link to a file shares its cache) was decoded before, else decoded (by one process
    at a time) and cached."""
    real = path.resolve()
    st = real.stat()
    key = hashlib.sha1(f"{real}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = cache_dir() / f"cifar10-{split}-{key}"
    cached = _read_cache(stem)     # a broken cache is rebuilt
    if cached is not None:
        return cached
    with _one_decoder(stem):
        cached = _read_cache(stem)   # decoded by another process while this one waited
        if cached is not None:
            return cached
        x, y = _read_parquet(path)
        _write_cache(stem.with_name(stem.name + ".y.npy"), y)    # y first: x's presence means both are there
        _write_cache(stem.with_name(stem.name + ".x.npy"), x)
    return x, y


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
