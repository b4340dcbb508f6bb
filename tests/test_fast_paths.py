"""The fast paths give the same parameters as the straightforward ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from brmtrl.config import load_config
from brmtrl.data import random_crop_flip
from brmtrl.data.federated import FederatedData
from brmtrl.client import client_generator
from brmtrl.engine import Simulation
from brmtrl.head_sgd import head_sgd_batched, head_sgd_reference
from brmtrl.split import get_flat, set_flat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reference import reference_local_update  # noqa: E402


def epochs_of(sizes, k, c, n_epochs, regression, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_epochs):
        feats = [torch.randn(n, k, generator=g, dtype=torch.float64) for n in sizes]
        ys = [torch.randn(n, generator=g, dtype=torch.float64) if regression else torch.randint(0, c, (n,), generator=g)
              for n in sizes]
        out.append((feats, ys))
    return out


@pytest.mark.parametrize("regression", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("momentum,wd", [(0.5, 1e-4), (0.0, 0.0), (0.9, 0.0)])
def test_batched_head_sgd_equals_reference(regression, with_bias, momentum, wd):
    sizes, k = [23, 7, 40, 10], 6
    c = 1 if regression else 5
    epochs = epochs_of(sizes, k, c, 3, regression)
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(len(sizes), c, k, generator=g, dtype=torch.float64)
    b0 = torch.randn(len(sizes), c, generator=g, dtype=torch.float64) if with_bias else None
    kw = dict(lr=0.05, momentum=momentum, weight_decay=wd, batch_size=10)
    w1, b1 = head_sgd_reference(epochs, w0.clone(), None if b0 is None else b0.clone(), **kw)
    w2, b2 = head_sgd_batched(epochs, w0.clone(), None if b0 is None else b0.clone(), **kw)
    torch.testing.assert_close(w1, w2, atol=1e-12, rtol=1e-10)
    if with_bias:
        torch.testing.assert_close(b1, b2, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(w1, w0)


def image_data(n_clients=3, per_client=(12, 9, 15), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(per_client)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    idx, start = [], 0
    for k in per_client:
        idx.append(torch.arange(start, start + k).numpy())
        start += k
    return FederatedData("tiny-images", x, y, x[:6], y[:6], idx, [torch.arange(6).numpy()] * n_clients, 10, "cnn_cifar")


@pytest.mark.parametrize("augment", [False, True])
def test_engine_round_equals_the_straightforward_loop(augment):
    cfg = load_config(None, ["dataset.name=cifar10", "model.name=cnn_cifar", "train.head_epochs=3",
                             "train.rep_epochs=1", "train.batch_size=4", "train.lr=0.05", "device=cpu",
                             f"dataset.augment={'true' if augment else 'false'}", "dataset.num_clients=3",
                             "train.participation=1.0", "aggregator.name=mean"])
    sim = Simulation(cfg, data=image_data())
    clients, r = [0, 1, 2], 1
    start_phi, start_heads = sim.shared.clone(), sim.private.clone()
    fast = sim.local_updates(clients, r)
    for i, c in enumerate(clients):
        set_flat(sim.model, "rep", start_phi)
        set_flat(sim.model, "head", start_heads[c])
        x, y = sim.data.client_train(c)
        reference_local_update(sim.model, x, y, head_epochs=3, rep_epochs=1, lr=0.05, momentum=0.5,
                               weight_decay=1e-4, batch_size=4, generator=client_generator(cfg["seed"], r, c),
                               augment=random_crop_flip if augment else None)
        torch.testing.assert_close(get_flat(sim.model, "rep") - start_phi, fast[i].delta, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(get_flat(sim.model, "head"), fast[i].private, atol=2e-5, rtol=1e-4)
        single = sim.local_update(c, r)  # the one-client path a Flower node runs gives the same
        torch.testing.assert_close(single.delta, fast[i].delta, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(single.private, fast[i].private, atol=2e-5, rtol=1e-4)
