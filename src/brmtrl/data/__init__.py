"""Data: loaders for the built-in datasets and their partition into clients."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import partition
from .augment import AUGMENTATION_KEY, augmentation_for, random_crop_flip
from .cifar10 import load_cifar10, load_cifar10_arrays, normalise, normalised_black
from .federated import DataError, FederatedData
from .femnist import BACKGROUND as FEMNIST_BACKGROUND, NUM_CLASSES as FEMNIST_CLASSES, load_femnist
from .synthetic import principal_angle_distance, synthetic_classification, synthetic_linear

__all__ = [
    "DataError", "FederatedData", "SUBSETS", "augmentation_for", "load_data", "load_cifar10", "load_femnist", "partition",
    "principal_angle_distance", "random_crop_flip", "synthetic_classification", "synthetic_linear",
]


def _check_classes_per_client(cfg: Mapping[str, Any], dataset: str, n_classes: int, where: str = "") -> None:
    """A pathological partition needs ``dataset.classes_per_client`` distinct classes per client."""
    s = cfg["dataset.classes_per_client"]
    if cfg["dataset.partition"] == "pathological" and s > n_classes:
        raise DataError(f"dataset.classes_per_client = {s} exceeds the {n_classes} classes of {dataset}{where}; "
                        f"the pathological partition gives each client that many distinct classes, "
                        f"so it must be at most {n_classes}")


def _partition_pooled(cfg: Mapping[str, Any], dataset: str, ytr: np.ndarray, yte: np.ndarray,
                      rng: np.random.Generator):
    n, kind = cfg["dataset.num_clients"], cfg["dataset.partition"]
    if kind == "pathological":
        _check_classes_per_client(cfg, dataset, len(np.unique(np.concatenate([ytr, yte]))), " present in the data")
        return partition.pathological(ytr, yte, n, cfg["dataset.classes_per_client"], rng)
    if kind == "dirichlet":
        return partition.dirichlet(ytr, yte, n, cfg["dataset.dirichlet_alpha"], rng)
    return partition.iid(len(ytr), len(yte), n, rng)


#: FedRep's FEMNIST task: the lowercase letters a-j (LEAF labels 36-45), relabelled 0-9
FEMNIST_FEDREP_LABELS = tuple(range(36, 46))


def _femnist_fedrep(cfg: Mapping[str, Any], root: str | None, rng: np.random.Generator,
                    extras: dict[str, Any]) -> FederatedData:
    """FedRep's FEMNIST protocol (``dataset.partition = 'fedrep'``): every writer's samples of a-j pooled
    and relabelled 0-9, then :func:`partition.lognormal_classes` (``dataset.classes_per_client`` classes
    each, log-normal sample counts with σ = ``dataset.lognormal_sigma``, ``dataset.test_fraction`` of each
    client's samples for test)."""
    import torch

    _check_classes_per_client(cfg, "FEMNIST's letters a-j", len(FEMNIST_FEDREP_LABELS))
    xtr, ytr, xte, yte, _, _, _ = load_femnist(root, None, cfg["dataset.test_fraction"], cfg["seed"])
    x, y = torch.cat([xtr, xte]), torch.cat([ytr, yte])
    keep = (y >= FEMNIST_FEDREP_LABELS[0]) & (y <= FEMNIST_FEDREP_LABELS[-1])
    x, y = x[keep], y[keep] - FEMNIST_FEDREP_LABELS[0]
    n = cfg["dataset.num_clients"]
    train_idx, test_idx = partition.lognormal_classes(y.numpy(), n, cfg["dataset.classes_per_client"],
                                                      cfg["dataset.lognormal_sigma"], cfg["dataset.test_fraction"], rng)
    few = [i for i, t in enumerate(train_idx) if len(t) < 2]
    if few:
        raise DataError(f"dataset.num_clients = {n} is too many for FEMNIST's letters a-j "
                        f"{'under ' + repr(root) if root else 'online'} ({len(y)} samples): clients {few[:5]} get fewer "
                        f"than 2 training samples; lower dataset.num_clients (about {len(y) // 30} suits this data)")
    order_tr, order_te = np.concatenate(train_idx), np.concatenate(test_idx)
    starts_tr, starts_te = np.cumsum([0] + [len(t) for t in train_idx]), np.cumsum([0] + [len(t) for t in test_idx])
    tri = [np.arange(starts_tr[i], starts_tr[i + 1]) for i in range(n)]
    tei = [np.arange(starts_te[i], starts_te[i + 1]) for i in range(n)]
    ttr, tte = torch.from_numpy(order_tr), torch.from_numpy(order_te)
    return FederatedData("femnist", x[ttr], y[ttr], x[tte], y[tte], tri, tei, len(FEMNIST_FEDREP_LABELS),
                         "cnn_femnist", extras=extras)


#: the datasets :func:`load_data` can load for a few clients only (``clients=``)
SUBSETS = ("cifar10",)


@lru_cache(maxsize=1)
def _cifar10_arrays(root: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10's raw arrays once per process (memory-mapped from the cache, or decoded from the hub)."""
    return load_cifar10_arrays(root)


def _rows_of(clients: Sequence[int], idx: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The pooled rows ``clients`` own, in order, and every client's indices into those rows (empty for the
    others; ids out of range are skipped: the caller names them)."""
    keep = sorted({c for c in clients if 0 <= c < len(idx)})
    new = [np.zeros(0, dtype=np.int64) for _ in idx]
    pos = 0
    for c in keep:
        new[c] = np.arange(pos, pos + len(idx[c]), dtype=np.int64)
        pos += len(idx[c])
    rows = np.concatenate([np.asarray(idx[c], dtype=np.int64) for c in keep]) if keep else np.zeros(0, np.int64)
    return rows, new


def load_data(cfg: Mapping[str, Any], clients: Sequence[int] | None = None) -> FederatedData:
    """Load and partition the dataset a config names (seeded by ``seed``).

    ``clients``: for a dataset in :data:`SUBSETS`, load only these clients' samples (a Flower node, which
    needs its own and nothing else): the same partition, and the same tensors for these clients, as the
    whole load; every other client holds no samples. Ignored for the other datasets."""
    name = cfg["dataset.name"]
    rng = np.random.default_rng([cfg["seed"], 7])
    root = cfg["dataset.root"] or None
    if name == "synthetic_linear":
        return synthetic_linear(cfg["dataset.num_clients"], cfg["dataset.samples_per_client"],
                                cfg["dataset.test_samples_per_client"], cfg["dataset.dim"],
                                cfg["dataset.rank"], cfg["dataset.noise"], rng)
    if name == "synthetic_classification":
        _check_classes_per_client(cfg, name, cfg["dataset.num_classes"], " (dataset.num_classes)")
        return synthetic_classification(cfg["dataset.num_clients"], cfg["dataset.samples_per_client"],
                                        cfg["dataset.test_samples_per_client"], cfg["dataset.dim"],
                                        cfg["dataset.rank"], cfg["dataset.num_classes"],
                                        cfg["dataset.noise"], rng)
    if name == "cifar10":
        _check_classes_per_client(cfg, "CIFAR-10", 10)
        extras = {AUGMENTATION_KEY: {"fill": normalised_black(), "hflip": True}}
        if clients is not None:
            arrays = _cifar10_arrays(root)
            (rxtr, rytr), (rxte, ryte) = arrays["train"], arrays["test"]
            tri, tei = _partition_pooled(cfg, "CIFAR-10", rytr, ryte, rng)
            (trows, tri), (erows, tei) = _rows_of(clients, tri), _rows_of(clients, tei)
            return FederatedData("cifar10", normalise(rxtr[trows]), torch.from_numpy(rytr[trows]),
                                 normalise(rxte[erows]), torch.from_numpy(ryte[erows]), tri, tei, 10, "cnn_cifar",
                                 extras=extras)
        xtr, ytr, xte, yte = load_cifar10(root)
        tri, tei = _partition_pooled(cfg, "CIFAR-10", ytr.numpy(), yte.numpy(), rng)
        return FederatedData("cifar10", xtr, ytr, xte, yte, tri, tei, 10, "cnn_cifar", extras=extras)
    if name == "femnist":
        # crop only: a mirrored character is another glyph (or none)
        extras = {AUGMENTATION_KEY: {"fill": (FEMNIST_BACKGROUND,), "hflip": False}}
        if cfg["dataset.partition"] == "natural":
            xtr, ytr, xte, yte, tri, tei, names = load_femnist(
                root, cfg["dataset.num_clients"], cfg["dataset.test_fraction"], cfg["seed"])
            return FederatedData("femnist", xtr, ytr, xte, yte, tri, tei, FEMNIST_CLASSES, "cnn_femnist",
                                 client_names=names, extras=extras)
        if cfg["dataset.partition"] == "fedrep":
            return _femnist_fedrep(cfg, root, rng, extras)
        # pooled writers re-partitioned synthetically
        _check_classes_per_client(cfg, "FEMNIST", FEMNIST_CLASSES)
        xtr, ytr, xte, yte, _, _, _ = load_femnist(root, None, cfg["dataset.test_fraction"], cfg["seed"])
        tri, tei = _partition_pooled(cfg, "FEMNIST", ytr.numpy(), yte.numpy(), rng)
        return FederatedData("femnist", xtr, ytr, xte, yte, tri, tei, FEMNIST_CLASSES, "cnn_femnist", extras=extras)
    raise DataError(f"unknown dataset {name!r}")
