"""FEMNIST: a LEAF JSON directory (``train/*.json``, ``test/*.json``) offline, or ``flwrlabs/femnist``'s
parquet files from the hub online (:func:`~brmtrl.data.hub.fetch_parquet`). One client per writer; pixels
are inverted so the background is 0."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from .cache import cache_dir, cached_arrays, source_key
from .federated import DataError
from .hub import fetch_parquet

__all__ = ["BACKGROUND", "HUB_ID", "NUM_CLASSES", "load_femnist"]

HUB_ID = "flwrlabs/femnist"
NUM_CLASSES = 62
#: The background's value in the images :func:`load_femnist` returns (LEAF's white 1.0, inverted).
BACKGROUND = 0.0

Writers = dict[str, tuple[np.ndarray, np.ndarray]]


def _parse_leaf_files(files: list[Path]) -> Writers:
    """Every writer's (x, y) in LEAF JSON ``files``."""
    writers: Writers = {}
    for f in files:
        try:
            blob = json.loads(f.read_text())
            users, data = blob["users"], blob["user_data"]
            for u in users:
                x = np.asarray(data[u]["x"], dtype=np.float32)
                y = np.asarray(data[u]["y"], dtype=np.int64)
                if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
                    raise ValueError(f"writer {u}: x has shape {x.shape}, y has {len(y)} labels; "
                                     "expected (n, 784) and n labels")
                writers[u] = (x, y)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"FEMNIST file {str(f)!r} is not valid JSON ({exc}); file truncated or corrupted?") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"FEMNIST file {str(f)!r} is not in LEAF's format "
                            f"({{users, num_samples, user_data: {{user: {{x, y}}}}}}): {exc}") from None
    return writers


def _read_leaf_dir(folder: Path) -> Writers:
    """The writers of a LEAF folder's ``*.json`` files, parsed once and then read from the cache
    (:mod:`brmtrl.data.cache`; parsing the 105-writer sample's JSON takes seconds)."""
    if not folder.is_dir():
        raise DataError(f"FEMNIST folder {str(folder)!r} not found; dataset.root must hold LEAF's "
                        "train/ and test/ folders of *.json files")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"FEMNIST folder {str(folder)!r} holds no *.json files (LEAF format expected)")

    def parse() -> dict[str, np.ndarray]:
        writers = _parse_leaf_files(files)
        names = list(writers)
        return {"names": np.asarray(names, dtype=str), "counts": np.asarray([len(writers[n][1]) for n in names]),
                "x": np.concatenate([writers[n][0] for n in names]) if names else np.zeros((0, 784), np.float32),
                "y": np.concatenate([writers[n][1] for n in names]) if names else np.zeros(0, np.int64)}

    stem = cache_dir() / f"femnist-{folder.name}-{source_key(files)}"
    a = cached_arrays(stem, ("names", "counts", "y", "x"), parse,
                      valid=lambda a: len(a["names"]) == len(a["counts"]) and len(a["x"]) == len(a["y"]) == a["counts"].sum())
    ends = np.cumsum(a["counts"])
    return {str(n): (a["x"][e - c:e], a["y"][e - c:e]) for n, c, e in zip(a["names"], a["counts"], ends)}


def _load_local(root: Path) -> tuple[Writers, Writers]:
    train, test = _read_leaf_dir(root / "train"), _read_leaf_dir(root / "test")
    missing = sorted(set(train) - set(test))
    if missing:
        raise DataError(f"FEMNIST under {str(root)!r}: writers {missing[:3]} have training data but no test data")
    return train, test


def _read_hub_parquet(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(writer ids, labels, images (n, 784) in [0, 1] with LEAF's white background 1.0) of one parquet
    shard in the ``flwrlabs/femnist`` schema (columns image (PNG bytes), writer_id, character)."""
    import pyarrow.parquet as pq
    from PIL import Image

    try:
        table = pq.read_table(path, columns=["image", "writer_id", "character"])
        writers = np.asarray(table.column("writer_id").to_pylist())
        labels = np.asarray(table.column("character").to_numpy(), dtype=np.int64)
        images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L"), dtype=np.float32).reshape(-1) / 255.0
                           for b in table.column("image").combine_chunks().field("bytes").to_pylist()])
    except Exception as exc:
        raise DataError(f"FEMNIST file {str(path)!r} is not in the {HUB_ID} schema (columns image, writer_id, "
                        f"character; 28x28 images): {type(exc).__name__}: {exc}") from None
    if images.shape[1] != 784:
        raise DataError(f"FEMNIST file {str(path)!r}: images of {images.shape[1]} pixels; expected 28x28")
    return writers, labels, images


def _load_online(test_fraction: float, seed: int) -> tuple[Writers, Writers]:
    """The hub's FEMNIST (one train split, every writer's samples): each writer's samples split into train
    and test by ``test_fraction``, with a generator seeded by ``seed``."""
    parts = [_read_hub_parquet(f) for f in fetch_parquet(HUB_ID, "data/train-*.parquet", "FEMNIST", "../shared/data/femnist")]
    writer_ids, labels, images = (np.concatenate([p[k] for p in parts]) for k in range(3))
    rng = np.random.default_rng(seed)
    train: Writers = {}
    test: Writers = {}
    for w in np.unique(writer_ids):
        idx = rng.permutation(np.flatnonzero(writer_ids == w))
        n_test = max(1, int(round(test_fraction * len(idx))))
        test[str(w)] = (images[idx[:n_test]], labels[idx[:n_test]])
        train[str(w)] = (images[idx[n_test:]], labels[idx[n_test:]])
    return train, test


def load_femnist(root: str | None, num_clients: int | None, test_fraction: float = 0.1, seed: int = 0):
    """Returns (train_x, train_y, test_x, test_y, train_idx, test_idx, writer_names) for the first
    ``num_clients`` writers in sorted order (all writers when None); images (N, 1, 28, 28) with background 0."""
    train, test = _load_local(Path(root)) if root else _load_online(test_fraction, seed)
    names = sorted(train)
    num_clients = len(names) if num_clients is None else num_clients
    if num_clients > len(names):
        raise DataError(f"dataset.num_clients = {num_clients} but FEMNIST "
                        f"{'under ' + repr(root) if root else 'online'} has only {len(names)} writers")
    names = names[:num_clients]

    def pool(source: Writers):
        xs, ys, idx, start = [], [], [], 0
        for n in names:
            x, y = source[n]
            xs.append(x)
            ys.append(y)
            idx.append(np.arange(start, start + len(y)))
            start += len(y)
        images = 1.0 - torch.from_numpy(np.concatenate(xs)).view(-1, 1, 28, 28)
        labels = torch.from_numpy(np.concatenate(ys))
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise DataError(f"FEMNIST labels outside 0..{NUM_CLASSES - 1}")
        return images, labels, idx

    trx, try_, tri = pool(train)
    tex, tey, tei = pool(test)
    return trx, try_, tex, tey, tri, tei, names
