"""Synthetic multi-task representation learning data with a known shared representation B*.

Both tasks draw x ~ N(0, I_d) and share an orthonormal B* ∈ R^{d×k}; client i has its own head w_i.

* ``synthetic_linear``: y = xᵀ B* w_i + σ ε (regression; the learned φ is compared with B*).
* ``synthetic_classification``: y = argmax_c (W_i B*ᵀ x)_c + σ·Gumbel noise, C classes.
"""

from __future__ import annotations

import numpy as np
import torch

from .federated import FederatedData

__all__ = ["synthetic_linear", "synthetic_classification", "principal_angle_distance"]


def _common(n_clients: int, n_train: int, n_test: int, d: int, k: int, rng: np.random.Generator):
    b_star, _ = np.linalg.qr(rng.standard_normal((d, k)))
    n = n_train + n_test
    x = rng.standard_normal((n_clients, n, d))
    return b_star, x


def _pack(name: str, x: np.ndarray, y: np.ndarray, n_train: int, num_classes: int, default_model: str,
          extras: dict) -> FederatedData:
    n_clients, n = x.shape[:2]
    n_test = n - n_train
    xt = torch.as_tensor(x[:, :n_train].reshape(-1, x.shape[-1]), dtype=torch.float32)
    xs = torch.as_tensor(x[:, n_train:].reshape(-1, x.shape[-1]), dtype=torch.float32)
    ydt = torch.long if num_classes else torch.float32
    yt = torch.as_tensor(y[:, :n_train].reshape(-1), dtype=ydt)
    ys = torch.as_tensor(y[:, n_train:].reshape(-1), dtype=ydt)
    train_idx = [np.arange(i * n_train, (i + 1) * n_train) for i in range(n_clients)]
    test_idx = [np.arange(i * n_test, (i + 1) * n_test) for i in range(n_clients)]
    return FederatedData(name, xt, yt, xs, ys, train_idx, test_idx, num_classes, default_model,
                         extras=extras)


def synthetic_linear(n_clients: int, n_train: int, n_test: int, d: int, k: int, noise: float,
                     rng: np.random.Generator) -> FederatedData:
    b_star, x = _common(n_clients, n_train, n_test, d, k, rng)
    w = rng.standard_normal((n_clients, k))
    y = np.einsum("cnd,dk,ck->cn", x, b_star, w) + noise * rng.standard_normal(x.shape[:2])
    return _pack("synthetic_linear", x, y, n_train, 0, "linear", {"B_star": b_star, "rank": k})


def synthetic_classification(n_clients: int, n_train: int, n_test: int, d: int, k: int,
                             num_classes: int, noise: float, rng: np.random.Generator) -> FederatedData:
    b_star, x = _common(n_clients, n_train, n_test, d, k, rng)
    heads = rng.standard_normal((n_clients, num_classes, k))
    logits = np.einsum("cnd,dk,cjk->cnj", x, b_star, heads) * 3.0
    logits += noise * rng.gumbel(size=logits.shape)
    y = logits.argmax(-1)
    return _pack("synthetic_classification", x, y, n_train, num_classes, "linear",
                 {"B_star": b_star, "rank": k})


def principal_angle_distance(learned: np.ndarray, b_star: np.ndarray) -> float:
    """sin of the largest principal angle between span(learned) and span(B*): ‖(I − B*B*ᵀ) Q‖₂.

    ``learned`` is d×k' (columns span the learned subspace); 0 means the subspaces agree, 1 means
    some learned direction is orthogonal to B*.
    """
    q, _ = np.linalg.qr(learned)
    b, _ = np.linalg.qr(b_star)
    resid = q - b @ (b.T @ q)
    return float(np.linalg.norm(resid, 2))
