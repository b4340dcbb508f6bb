"""Partitions of pooled labels into clients: pathological (s classes each), Dirichlet(α), IID.

Each returns, per client, indices into the train pool and into the test pool; a client's test
samples follow its own label distribution (FedRep's protocol: test drawn from the client's classes).
"""

from __future__ import annotations

import numpy as np

__all__ = ["pathological", "dirichlet", "iid", "lognormal_classes"]

Split = tuple[list[np.ndarray], list[np.ndarray]]


def _split_class(indices: np.ndarray, owners: list[int], n_clients: int,
                 rng: np.random.Generator, weights: np.ndarray | None = None) -> list[list[np.ndarray]]:
    out: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    if not owners:
        return out
    idx = rng.permutation(indices)
    if weights is None:
        parts = np.array_split(idx, len(owners))
    else:
        cuts = (np.cumsum(weights)[:-1] * len(idx)).astype(int)
        parts = np.split(idx, cuts)
    for owner, part in zip(owners, parts):
        out[owner].append(part)
    return out


def _assemble(chunks: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.sort(np.concatenate(c)) if c else np.empty(0, dtype=np.int64) for c in chunks]


def pathological(train_y: np.ndarray, test_y: np.ndarray, n_clients: int, classes_per_client: int,
                 rng: np.random.Generator) -> Split:
    """Each client holds ``classes_per_client`` distinct classes; every class goes to about the same
    number of clients and its samples are split evenly among them (train and test alike)."""
    classes = np.unique(np.concatenate([train_y, test_y]))
    n_cls = len(classes)
    s = classes_per_client
    if s > n_cls:
        raise ValueError(f"dataset.classes_per_client = {s} exceeds the {n_cls} classes of the dataset")
    # Deal class slots round-robin from a shuffled deck so classes are balanced and distinct per client.
    assignment: list[list[int]] = [[] for _ in range(n_clients)]
    deck: list[int] = []
    for i in range(n_clients):
        for _ in range(s):
            if not deck:
                deck = list(rng.permutation(classes))
            pick = next((c for c in deck if c not in assignment[i]), None)
            if pick is None:  # deck holds only classes this client has: open a fresh deck
                fresh = [c for c in rng.permutation(classes) if c not in assignment[i]]
                pick = fresh[0]
            else:
                deck.remove(pick)
            assignment[i].append(int(pick))
    train_chunks: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    test_chunks: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for c in classes:
        owners = [i for i in range(n_clients) if c in assignment[i]]
        for i, part in enumerate(_split_class(np.flatnonzero(train_y == c), owners, n_clients, rng)):
            train_chunks[i] += part
        for i, part in enumerate(_split_class(np.flatnonzero(test_y == c), owners, n_clients, rng)):
            test_chunks[i] += part
    return _assemble(train_chunks), _assemble(test_chunks)


def dirichlet(train_y: np.ndarray, test_y: np.ndarray, n_clients: int, alpha: float,
              rng: np.random.Generator) -> Split:
    """Per class, client shares ~ Dirichlet(α); the same shares split that class's test samples."""
    classes = np.unique(train_y)
    train_chunks: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    test_chunks: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    owners = list(range(n_clients))
    for c in classes:
        w = rng.dirichlet(np.full(n_clients, alpha))
        for i, part in enumerate(_split_class(np.flatnonzero(train_y == c), owners, n_clients, rng, w)):
            train_chunks[i] += part
        for i, part in enumerate(_split_class(np.flatnonzero(test_y == c), owners, n_clients, rng, w)):
            test_chunks[i] += part
    return _assemble(train_chunks), _assemble(test_chunks)


def iid(n_train: int, n_test: int, n_clients: int, rng: np.random.Generator) -> Split:
    tr = np.array_split(rng.permutation(n_train), n_clients)
    te = np.array_split(rng.permutation(n_test), n_clients)
    return [np.sort(t) for t in tr], [np.sort(t) for t in te]


def lognormal_classes(y: np.ndarray, n_clients: int, classes_per_client: int, sigma: float,
                      test_fraction: float, rng: np.random.Generator) -> Split:
    """FedRep's FEMNIST protocol (after FedProx's non-IID generator), on one pool of labels ``y``:
    client i holds the classes (s·i + j) mod C, j < s (s = ``classes_per_client``, C the classes
    present), each class's samples are split among its owners in proportion to weights drawn from
    LogNormal(0, σ²), so sample counts are log-normal; then each client's samples are split at random
    into train and test (``test_fraction``, at least one test sample). Indices are into ``y``."""
    classes = np.unique(y)
    c, s = len(classes), classes_per_client
    owners: dict[int, list[int]] = {int(k): [] for k in classes}
    for i in range(n_clients):
        for j in range(s):
            owners[int(classes[(s * i + j) % c])].append(i)
    chunks: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for k in classes:
        who = owners[int(k)]
        if not who:
            continue
        w = rng.lognormal(0.0, sigma, size=len(who))
        parts = _split_class(np.flatnonzero(y == k), who, n_clients, rng, w / w.sum())
        for owner in who:
            chunks[owner].extend(parts[owner])
    train, test = [], []
    for mine in _assemble(chunks):
        perm = rng.permutation(mine)
        n_test = max(1, int(round(test_fraction * len(perm)))) if len(perm) > 1 else 0
        test.append(np.sort(perm[:n_test]))
        train.append(np.sort(perm[n_test:]))
    return train, test
