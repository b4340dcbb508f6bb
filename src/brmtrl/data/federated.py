"""The federated dataset: pooled tensors plus, per client, the indices of its train and test samples."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..errors import DataError

__all__ = ["DataError", "FederatedData"]


@dataclass
class FederatedData:
    """Samples pooled in ``train_x``/``test_x``; client ``i`` owns ``train_idx[i]`` and ``test_idx[i]``.

    Keeping indices instead of per-client copies makes 1000-client partitions cost no extra memory.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_idx: list[np.ndarray]
    test_idx: list[np.ndarray]
    num_classes: int  # 0 for regression
    default_model: str
    client_names: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        return len(self.train_idx)

    @property
    def task(self) -> str:
        return "regression" if self.num_classes == 0 else "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def out_dim(self) -> int:
        return self.num_classes if self.num_classes else 1

    def client_train(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client ``i``'s training samples, on the pool's device."""
        idx = torch.as_tensor(self.train_idx[i], dtype=torch.long, device=self.train_x.device)
        return self.train_x[idx], self.train_y[idx]

    def test_index(self, i: int) -> torch.Tensor:
        """Positions of client ``i``'s test samples in the pooled test set, on the pool's device (to pick
        its rows out of anything computed on the whole pool, such as φ's features)."""
        return torch.as_tensor(self.test_idx[i], dtype=torch.long, device=self.test_x.device)

    def client_test(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client ``i``'s test samples, on the pool's device."""
        idx = self.test_index(i)
        return self.test_x[idx], self.test_y[idx]

    def to(self, device: torch.device) -> "FederatedData":
        """A copy whose pooled tensors are on ``device`` (this one is left as it is: a caller's data stays
        where the caller keeps it)."""
        return replace(self, **{name: getattr(self, name).to(device)
                                for name in ("train_x", "train_y", "test_x", "test_y")})

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the dataset and its partition: the name, the classes, every client's train and
        test indices, the pooled labels and every 997th value of the pooled inputs. Two runs with the same
        fingerprint trained and scored the same clients on the same samples (``transfer.fedavg_run``)."""
        h = hashlib.sha256(f"{self.name}|{self.num_classes}|{self.num_clients}".encode())
        for idx in (*self.train_idx, *self.test_idx):
            h.update(np.asarray(idx, dtype=np.int64).tobytes() + b"|")
        for t in (self.train_y, self.test_y):
            h.update(t.detach().to("cpu", torch.float64).numpy().tobytes())
        for t in (self.train_x, self.test_x):
            h.update(t.detach().flatten()[::997].to("cpu").numpy().tobytes())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Sizes of the pools and of the clients' sets. Clients may hold no training or no test
        samples (a Dirichlet partition with small α does that); they are counted, not an error."""
        train = np.array([len(i) for i in self.train_idx], dtype=np.int64)
        test = np.array([len(i) for i in self.test_idx], dtype=np.int64)

        def lo(a: np.ndarray) -> int:
            return int(a.min()) if a.size else 0

        def hi(a: np.ndarray) -> int:
            return int(a.max()) if a.size else 0

        return {
            "name": self.name, "num_clients": self.num_clients, "num_classes": self.num_classes,
            "input_shape": list(self.input_shape), "train_samples": int(train.sum()),
            "test_samples": int(test.sum()),
            "train_per_client_min": lo(train), "train_per_client_max": hi(train),
            "test_per_client_min": lo(test), "test_per_client_max": hi(test),
            "clients_without_train": int((train == 0).sum()), "clients_without_test": int((test == 0).sum()),
        }
