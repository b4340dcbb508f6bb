from __future__ import annotations

import pytest
import torch

from brmtrl.data import random_crop_flip
from brmtrl.local_update import SGDSettings, train_phases
from brmtrl.models import cnn_cifar, cnn_femnist, linear, mlp
from brmtrl.split import get_flat, part_size, set_flat

SGD = SGDSettings(lr=0.05, momentum=0.5, weight_decay=1e-4, batch_size=4)


def data(n=12, shape=(3, 32, 32), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("factory,head", [(lambda: cnn_cifar(10), 64 * 10 + 10), (lambda: cnn_femnist(62), 128 * 62 + 62),
                                          (lambda: mlp(20, 5, 16, 8), 8 * 5 + 5), (lambda: linear(20, 3, 4), 12)])
def test_split_sizes_and_roundtrip(factory, head):
    m = factory()
    assert part_size(m, "head") == head
    assert part_size(m, "rep") + head == sum(p.numel() for p in m.parameters())
    v = torch.arange(part_size(m, "rep"), dtype=torch.float32)
    set_flat(m, "rep", v)
    assert torch.equal(get_flat(m, "rep"), v)


def test_fedrep_cnn_architecture():
    m = cnn_cifar(10)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    convs = [l for l in m.rep if isinstance(l, torch.nn.Conv2d)]
    fcs = [l for l in m.rep if isinstance(l, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(3, 64, (5, 5)), (64, 64, (5, 5))]
    assert [(l.in_features, l.out_features) for l in fcs] == [(1600, 120), (120, 64)]
    assert (m.head.in_features, m.head.out_features) == (64, 10)


def test_head_epochs_leave_phi_alone_and_rep_epochs_leave_head_alone():
    torch.manual_seed(0)
    m = cnn_cifar(10)
    x, y = data()
    rep0, head0 = get_flat(m, "rep"), get_flat(m, "head")
    train_phases(m, x, y, [("head", 2)], SGD, torch.Generator().manual_seed(0))
    assert torch.equal(get_flat(m, "rep"), rep0)
    head1 = get_flat(m, "head")
    assert not torch.equal(head1, head0)
    train_phases(m, x, y, [("rep", 1)], SGD, torch.Generator().manual_seed(0))
    assert torch.equal(get_flat(m, "head"), head1)
    assert not torch.equal(get_flat(m, "rep"), rep0)


@pytest.mark.parametrize("augment", [None, random_crop_flip])
def test_feature_reuse_equals_per_batch_reference(augment):
    x, y = data(14)
    results = []
    for reuse in (True, False):
        torch.manual_seed(3)
        m = cnn_cifar(10).double()
        train_phases(m, x.double(), y, [("head", 3), ("rep", 1)], SGD, torch.Generator().manual_seed(5),
                     augment, reuse_features=reuse)
        results.append(get_flat(m, "all"))
    torch.testing.assert_close(results[0], results[1], atol=1e-10, rtol=1e-9)


def test_random_crop_flip_shapes_and_content():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # every output pixel is either padding (0) or a pixel of the same image and channel
    for b in range(2):
        for c in range(3):
            vals = set(out[b, c].flatten().tolist()) - {0.0}
            assert vals <= set(x[b, c].flatten().tolist())


def _round_of(algo: str, *overrides: str):
    from brmtrl.config import load_config
    from brmtrl.engine import Simulation

    cfg = load_config(None, ["dataset.name=synthetic_classification", "dataset.num_clients=6", "model.name=mlp",
                             "dataset.samples_per_client=20", "dataset.dim=10", "dataset.rank=2", "device=cpu",
                             "train.participation=1.0", "train.rounds=1", "train.local_epochs=1",
                             f"algorithm.name={algo}", "aggregator.name=mean", *overrides])
    sim = Simulation(cfg)
    before_shared, before_private = sim.shared.clone(), sim.private.clone()
    sim.run()
    return sim, before_shared, before_private


def test_fedavg_shares_the_whole_model():
    sim, shared0, private0 = _round_of("fedavg")
    assert sim.shared.numel() == sum(p.numel() for p in sim.model.parameters()) and sim.private.shape[1] == 0
    assert not torch.equal(sim.shared, shared0)


def test_fedrep_and_fedper_share_phi_and_keep_heads():
    for algo in ("fedrep", "fedper"):
        sim, shared0, private0 = _round_of(algo)
        assert sim.shared.numel() == part_size(sim.model, "rep") and sim.private.shape[1] == part_size(sim.model, "head")
        assert all(not torch.equal(sim.private[c], sim.private[0]) for c in range(1, 6))  # heads stay personal


def test_lg_fedavg_shares_the_top_two_layers_as_fedreps_code():
    m = cnn_cifar(10)
    names = {id(p): n for n, p in m.named_parameters()}
    from brmtrl.split import part_parameters

    # FedRep's code shares fc2 and fc3 of its CIFAR-10 CNN for LG-FedAvg; here fc2 is rep.9, fc3 the head
    assert [names[id(p)] for p in part_parameters(m, "top")] == ["rep.9.weight", "rep.9.bias", "head.weight", "head.bias"]
    assert [names[id(p)] for p in part_parameters(m, "bottom")][:2] == ["rep.0.weight", "rep.0.bias"]
    sim, shared0, private0 = _round_of("lg_fedavg")
    layers = [m for m in sim.model.modules() if isinstance(m, torch.nn.Linear)]
    top = sum(p.numel() for l in layers[-2:] for p in l.parameters())
    assert sim.shared.numel() == top and sim.private.shape[1] == part_size(sim.model, "all") - top
    # the lower layers stay on each client and differ between clients after local training
    assert not torch.equal(sim.private[0], sim.private[1]) and not torch.equal(sim.private[0], private0[0])
    one = _round_of("lg_fedavg", "algorithm.lg_shared_layers=1")[0]
    assert one.shared.numel() == part_size(one.model, "head")
