from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR = SHARED / "cifar10"
FEMNIST = SHARED / "femnist"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# one torch thread per xdist worker (six share the cores), two in a plain run
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))


def need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data {path} not present")


@pytest.fixture
def tiny_cfg():
    """A seconds-long synthetic configuration, as overrides."""
    from brmtrl.config import load_config

    def make(*overrides: str):
        base = [
            "dataset.name=synthetic_classification", "dataset.num_clients=20", "dataset.samples_per_client=30",
            "dataset.test_samples_per_client=50", "dataset.dim=20", "dataset.rank=3", "dataset.num_classes=4",
            "model.name=linear", "train.rounds=4", "train.participation=0.5", "train.head_epochs=2",
            "train.rep_epochs=1", "train.lr=0.05", "train.batch_size=10", "device=cpu",
        ]
        return load_config(None, base + list(overrides))

    return make


@contextmanager
def ray_exclusive(factory: pytest.TempPathFactory):
    """One Ray instance at a time across the xdist workers (a lock file beside their temp folders): several
    Flower simulations starting Ray at once on a 2-core machine can starve one another for minutes."""
    lock = factory.getbasetemp().parent / "ray.lock"
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture
def one_ray_at_a_time(tmp_path_factory: pytest.TempPathFactory):
    """For a test that runs Flower's simulation engine (Ray): see :func:`ray_exclusive`."""
    with ray_exclusive(tmp_path_factory):
        yield
