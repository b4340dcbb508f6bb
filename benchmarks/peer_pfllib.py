"""One FedRep round on the paper's CIFAR-10 setting: PFLlib's client against brmtrl's engine (issue 20).

    git clone https://github.com/TsingZ0/PFLlib /tmp/PFLlib          # a checkout of the peer, not vendored
    python benchmarks/peer_pfllib.py --pfllib /tmp/PFLlib [--root ../shared/data/cifar10] [--repeats 1]

Both sides run the same 10 sampled clients of the paper's partition (augmentation off, each client's 500
training samples), FedRep's CNN from the same initial weights (φ and each client's head), 10 head epochs then
1 φ epoch at batch 10 (50 SGD steps per epoch on both: PFLlib's DataLoader drops a last partial batch, and
500 samples leave none), plain SGD at lr 0.01 (PFLlib's optimiser: no momentum, no weight decay; brmtrl is
set to the same), the same torch threads, on the CPU. PFLlib's side is its own
``flcore.clients.clientrep.clientRep`` from the checkout, ``train()`` unchanged; stubbed are only what it needs
to load data and settings: its ``utils.data_utils.read_client_data`` (here: the client's (x, y) pairs from the
same tensors brmtrl trains on), the ``args`` namespace, and ``sklearn`` when it is not installed (imported by
its base client for test metrics, which are not run). Timed: the ten clients' ``train()`` (PFLlib) against
``Simulation.local_updates`` for the same clients (brmtrl), each the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import copy
import importlib.machinery
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brmtrl.config import load_config  # noqa: E402
from brmtrl.data import load_data  # noqa: E402
from brmtrl.engine import Simulation  # noqa: E402
from brmtrl.split import get_flat, set_flat  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10.toml"


class BaseHeadSplit(nn.Module):
    """The model shape PFLlib's FedRep client expects: ``base`` (φ) and ``head``, forward = head(base(x))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.base = copy.deepcopy(model.rep)
        self.head = copy.deepcopy(model.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.base(x))


def _module(name: str, package: bool = False) -> types.ModuleType:
    """A stand-in module with a spec (torch looks modules up by spec)."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        mod.__path__ = []
    return mod


def pfllib_client_class(system: Path, data: dict[int, tuple[torch.Tensor, torch.Tensor]]):
    """PFLlib's ``clientRep`` imported from the checkout, with its data reader stubbed to ``data``."""
    utils = _module("utils", package=True)
    reader = _module("utils.data_utils")

    def read_client_data(dataset, idx, is_train=True, few_shot=0):
        x, y = data[idx]
        return list(zip(x, y))

    reader.read_client_data = read_client_data
    sys.modules["utils"], sys.modules["utils.data_utils"] = utils, reader
    try:
        import sklearn  # noqa: F401
    except ImportError:
        stub = _module("sklearn", package=True)
        stub.metrics = _module("sklearn.metrics")
        stub.preprocessing = _module("sklearn.preprocessing")
        stub.preprocessing.label_binarize = None
        sys.modules.update({"sklearn": stub, "sklearn.metrics": stub.metrics,
                            "sklearn.preprocessing": stub.preprocessing})
    sys.path.insert(0, str(system))
    from flcore.clients.clientrep import clientRep
    return clientRep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pfllib", required=True, help="a checkout of https://github.com/TsingZ0/PFLlib")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    system = Path(args.pfllib) / "system"
    if not (system / "flcore" / "clients" / "clientrep.py").is_file():
        sys.exit(f"peer_pfllib: {system}/flcore/clients/clientrep.py not found; --pfllib must be a PFLlib checkout")
    threads = torch.get_num_threads()
    cfg = load_config(CONFIG, [f"dataset.root={args.root}", "device=cpu", "attack.name=none",
                               "dataset.augment=false", "train.momentum=0.0", "train.weight_decay=0.0"])
    data = load_data(cfg)
    sim = Simulation(cfg, data=data)
    clients = sim.sample_clients(1)
    phi0, heads0 = sim.shared.clone(), sim.private.clone()
    local = {c: sim.data.client_train(c) for c in clients}
    client_cls = pfllib_client_class(system, {c: (x.contiguous(memory_format=torch.contiguous_format), y)
                                              for c, (x, y) in local.items()})
    model = BaseHeadSplit(sim.model).to(memory_format=torch.contiguous_format)
    pargs = types.SimpleNamespace(
        model=model, algorithm="FedRep", dataset="cifar10", device="cpu", save_folder_name="unused",
        num_classes=data.num_classes, batch_size=cfg["train.batch_size"], local_learning_rate=cfg["train.lr"],
        local_epochs=cfg["train.rep_epochs"], plocal_epochs=cfg["train.head_epochs"], few_shot=0,
        learning_rate_decay=False, learning_rate_decay_gamma=0.99)
    print(f"# peer_pfllib: PFLlib's clientRep against brmtrl, one FedRep round — torch {torch.__version__}, "
          f"{threads} threads")
    print(f"command: python benchmarks/peer_pfllib.py --pfllib {args.pfllib} --root {args.root} "
          f"--repeats {args.repeats}\n")
    print(f"clients {clients}; samples {[len(local[c][1]) for c in clients]}; head epochs "
          f"{cfg['train.head_epochs']}, φ epochs {cfg['train.rep_epochs']}, batch {cfg['train.batch_size']}, "
          f"lr {cfg['train.lr']}, momentum {cfg['train.momentum']}, weight decay {cfg['train.weight_decay']}\n")
    t_peer, t_ours = [], []
    for _ in range(args.repeats):
        peers = []
        for c in clients:
            p = client_cls(pargs, id=c, train_samples=len(local[c][1]), test_samples=0, train_slow=False,
                           send_slow=False)
            set_flat(_as_rep(p.model), "rep", phi0)
            set_flat(_as_rep(p.model), "head", heads0[c])
            peers.append(p)
        torch.set_num_threads(threads)
        t = time.perf_counter()
        for p in peers:
            p.train()
        t_peer.append(time.perf_counter() - t)
        peer_delta = torch.stack([get_flat(_as_rep(p.model), "rep") - phi0 for p in peers])
        sim.shared, sim.private = phi0.clone(), heads0.clone()
        t = time.perf_counter()
        ours = torch.stack([res.delta for res in sim.local_updates(clients, 1)])
        t_ours.append(time.perf_counter() - t)
    tp, to = min(t_peer), min(t_ours)
    print("| implementation | one round, 10 clients (s) | ‖mean φ delta‖ |")
    print("| --- | ---: | ---: |")
    print(f"| PFLlib `clientRep.train` | {tp:.2f} | {float(peer_delta.mean(0).norm()):.4f} |")
    print(f"| brmtrl `Simulation.local_updates` | {to:.2f} | {float(ours.mean(0).norm()):.4f} |")
    print(f"\nbrmtrl is {tp / to:.2f}x faster (PFLlib / brmtrl, best of {args.repeats}).")


class _as_rep(nn.Module):
    """A view of a BaseHeadSplit under brmtrl's names (``rep``, ``head``) for get_flat/set_flat."""

    def __init__(self, split: BaseHeadSplit):
        super().__init__()
        self.rep, self.head = split.base, split.head


if __name__ == "__main__":
    main()
