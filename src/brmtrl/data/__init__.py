"""Data: loaders for the built-in datasets and their partition into clients."""

from __future__ import annotations

from typing import Mapping, Any

import numpy as np

from . import partition
from .augment import random_crop_flip
from .cifar10 import load_cifar10
from .federated import DataError, FederatedData
from .femnist import load_femnist
from .synthetic import principal_angle_distance, synthetic_classification, synthetic_linear

__all__ = [
    "DataError", "FederatedData", "load_data", "load_cifar10", "load_femnist", "partition",
    "principal_angle_distance", "random_crop_flip", "synthetic_classification", "synthetic_linear",
]


def _partition_pooled(cfg: Mapping[str, Any], ytr: np.ndarray, yte: np.ndarray, rng: np.random.Generator):
    n, kind = cfg["dataset.num_clients"], cfg["dataset.partition"]
    if kind == "pathological":
        return partition.pathological(ytr, yte, n, cfg["dataset.classes_per_client"], rng)
    if kind == "dirichlet":
        return partition.dirichlet(ytr, yte, n, cfg["dataset.dirichlet_alpha"], rng)
    return partition.iid(len(ytr), len(yte), n, rng)


def load_data(cfg: Mapping[str, Any]) -> FederatedData:
    """Load and partition the dataset a config names (seeded by ``seed``)."""
    name = cfg["dataset.name"]
    rng = np.random.default_rng([cfg["seed"], 7])
    root = cfg["dataset.root"] or None
    if name == "synthetic_linear":
        return synthetic_linear(cfg["dataset.num_clients"], cfg["dataset.samples_per_client"],
                                cfg["dataset.test_samples_per_client"], cfg["dataset.dim"],
                                cfg["dataset.rank"], cfg["dataset.noise"], rng)
    if name == "synthetic_classification":
        return synthetic_classification(cfg["dataset.num_clients"], cfg["dataset.samples_per_client"],
                                        cfg["dataset.test_samples_per_client"], cfg["dataset.dim"],
                                        cfg["dataset.rank"], cfg["dataset.num_classes"],
                                        cfg["dataset.noise"], rng)
    if name == "cifar10":
        xtr, ytr, xte, yte = load_cifar10(root)
        if cfg["dataset.partition"] == "pathological" and cfg["dataset.classes_per_client"] > 10:
            raise DataError("dataset.classes_per_client must be <= 10 for CIFAR-10")
        tri, tei = _partition_pooled(cfg, ytr.numpy(), yte.numpy(), rng)
        return FederatedData("cifar10", xtr, ytr, xte, yte, tri, tei, 10, "cnn_cifar")
    if name == "femnist":
        if cfg["dataset.partition"] == "natural":
            xtr, ytr, xte, yte, tri, tei, names = load_femnist(
                root, cfg["dataset.num_clients"], cfg["dataset.test_fraction"], cfg["seed"])
            return FederatedData("femnist", xtr, ytr, xte, yte, tri, tei, 62, "cnn_femnist", client_names=names)
        # pooled writers re-partitioned synthetically
        xtr, ytr, xte, yte, _, _, _ = load_femnist(root, None, cfg["dataset.test_fraction"], cfg["seed"])
        tri, tei = _partition_pooled(cfg, ytr.numpy(), yte.numpy(), rng)
        return FederatedData("femnist", xtr, ytr, xte, yte, tri, tei, 62, "cnn_femnist")
    raise DataError(f"unknown dataset {name!r}")

