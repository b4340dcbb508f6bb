"""Device readiness, checked on a CPU-only machine: where each tensor lives, what each device can do,
determinism settings and host syncs. The ``meta`` device stands in for a GPU: a tensor there has a
device but no data, so a test sees where code puts tensors without a GPU."""

from __future__ import annotations

import pytest
import torch

from brmtrl.config import ConfigError
from brmtrl.device import aggregation_device, configure_determinism, for_aggregation, resolve_device
from brmtrl.head_sgd import head_sgd_batched, head_sgd_reference
from brmtrl.sweep import spread_device


def test_cuda_n_beyond_the_machines_gpus_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"'device' = 'cuda:3' but this machine has 1 GPU \(cuda:0 .. cuda:0\)"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    # a Flower ClientApp sees only the GPU Ray gave it: cuda:N is that one
    assert resolve_device("cuda:3", visible_only=True) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def test_mps_updates_are_combined_on_the_cpu_in_float64():
    """MPS has no float64, which every rule uses: the server step and the adversary move MPS updates to
    the CPU; the CPU and CUDA keep them where they are."""
    assert aggregation_device("mps") == torch.device("cpu")
    assert aggregation_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert aggregation_device("cpu") == torch.device("cpu")
    x = torch.ones(3)
    assert for_aggregation(x) is x and for_aggregation("junk") == "junk"


def test_cuda_runs_get_deterministic_cudnn(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    configure_determinism(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark                      # nothing changes for the CPU
    configure_determinism(torch.device("cuda"))
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_moving_federated_data_leaves_the_callers_copy_where_it_was(tiny_cfg):
    from brmtrl.data import load_data

    data = load_data(tiny_cfg())
    moved = data.to(torch.device("meta"))
    assert moved.train_x.device.type == "meta" and data.train_x.device.type == "cpu"
    x, _ = moved.client_train(0)                                # indices follow the pool's device
    assert x.device.type == "meta"


def test_a_flower_node_moves_its_own_samples_to_its_device(tiny_cfg, monkeypatch):
    """The node's model is built on its device; the samples it trains and scores on must be there too
    (the pooled dataset stays on the CPU, shared by the ClientApps of a process)."""
    pytest.importorskip("flwr")
    from brmtrl.data import load_data
    from brmtrl.flower import node as node_mod

    monkeypatch.setattr(node_mod, "resolve_device", lambda name, **kw: torch.device("meta"))
    cfg = tiny_cfg()
    data = load_data(cfg)
    node = node_mod.Node(cfg, 0, data=data)
    assert node.device.type == "meta"
    assert all(p.device.type == "meta" for p in node.model.parameters())
    for t in (*node._train_data(), *node.test_xy):
        assert t.device == node.device
    assert data.train_x.device.type == "cpu"


def test_the_batched_head_sgd_reads_nothing_back_from_the_device(monkeypatch):
    """No host sync in the hot loop: the batched path never turns a tensor into a Python value (on a
    GPU each such read waits for every queued kernel). Same result as the reference path."""
    g = torch.Generator().manual_seed(0)
    sizes, k, c = [7, 12, 3], 5, 4
    feats = [torch.randn(n, k, generator=g) for n in sizes]
    targets = [torch.randint(0, c, (n,), generator=g) for n in sizes]
    epochs = [(feats, targets)] * 3
    w0, b0 = torch.randn(3, c, k, generator=g), torch.randn(3, c, generator=g)
    ref_w, ref_b = head_sgd_reference(epochs, w0.clone(), b0.clone(), lr=0.1, momentum=0.5, weight_decay=1e-4,
                                      batch_size=4)

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read back to the host")

    for name in ("__bool__", "__int__", "__float__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    w, b = head_sgd_batched(epochs, w0.clone(), b0.clone(), lr=0.1, momentum=0.5, weight_decay=1e-4, batch_size=4)
    monkeypatch.undo()
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(b, ref_b)


def test_parallel_sweep_cells_spread_over_the_visible_gpus():
    cells = [spread_device({"device": "auto"}, i, 3)["device"] for i in range(5)]
    assert cells == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert spread_device({"device": "cpu"}, 4, 3) == {"device": "cpu"}
    assert spread_device({"device": "auto"}, 4, 1) == {"device": "auto"}
