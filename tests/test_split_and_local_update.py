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
