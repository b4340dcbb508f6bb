"""brmtrl.sgd.SGD: torch.optim.SGD's numbers without torch.optim (whose first use imports TorchDynamo)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from brmtrl.sgd import SGD


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.5, 0.0), (0.0, 1e-3), (0.9, 1e-4)])
def test_sgd_gives_torch_optims_numbers_exactly(momentum, weight_decay):
    """Bit for bit, over steps with a parameter that has no gradient in some (frozen, as a head is in the
    representation's epochs) and zero_grad both ways."""
    ours, ref = _net(0), _net(0)
    opt = SGD(ours.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay)
    ropt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        for net, o in ((ours, opt), (ref, ropt)):
            o.zero_grad(set_to_none=step % 2 == 0)
            nn.functional.cross_entropy(net(x), y).backward()
            if step % 3 == 1:
                net[2].weight.grad = None            # no gradient this step: left alone, its buffer kept
            o.step()
        for a, b in zip(ours.parameters(), ref.parameters()):
            assert torch.equal(a, b), step


def test_negative_settings_are_refused():
    with pytest.raises(ValueError, match="lr, momentum and weight_decay >= 0"):
        SGD([nn.Parameter(torch.zeros(2))], lr=-0.1)


def test_a_local_update_does_not_import_torchdynamo():
    """Training a client (what each Flower ClientApp process does) leaves torch._dynamo unimported: it
    would cost every such process about a second of CPU."""
    code = ("import sys, torch\n"
            "from brmtrl.config import load_config\n"
            "from brmtrl.engine import Simulation\n"
            "Simulation(load_config(None, ['dataset.name=synthetic_classification', 'dataset.num_clients=4',"
            " 'model.name=linear', 'train.rounds=1', 'device=cpu'])).run()\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
