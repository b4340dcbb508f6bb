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


def _waits(item: pytest.Item) -> bool:
    """A test that mostly waits on processes it starts (real federations, Ray): marked ``slow`` or running
    Flower's simulation engine."""
    return item.get_closest_marker("slow") is not None or "one_ray_at_a_time" in getattr(item, "fixturenames", ())


def _uses_ray(item: pytest.Item) -> bool:
    return "one_ray_at_a_time" in getattr(item, "fixturenames", ()) or item.path.name == "test_sweep_ray.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, start the waiting tests first and spread them over the workers. ``--dist worksteal``
    hands each of the W workers a contiguous chunk of the collection (sizes as computed here), and the
    suite's wall time is bounded by its longest chain of waits: in file order every federation test would
    sit in one worker's chunk and run one after another. Tests sharing a module-scoped fixture stay together
    (one Ray cluster per module, not per worker); every other test keeps its place in file order."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2 or len(items) < 2 * workers:
        return
    units: dict[str, list[pytest.Item]] = {}
    rest: list[pytest.Item] = []
    for item in items:
        if not _waits(item):
            rest.append(item)
            continue
        info = getattr(item, "_fixtureinfo", None)
        shared = info is not None and any(defs and defs[-1].scope == "module"
                                          for defs in info.name2fixturedefs.values())
        units.setdefault(item.module.__name__ if shared and item.module else item.nodeid, []).append(item)
    # round-robin, the federations before the Ray tests: Ray starting under the load of the first minute
    # (every worker importing torch, SuperNodes starting) measured several times slower than later
    chunks: list[list[pytest.Item]] = [[] for _ in range(workers)]
    ordered = sorted(units.values(), key=lambda u: _uses_ray(u[0]))
    for k, unit in enumerate(ordered):
        chunks[k % workers].extend(unit)
    remaining, order = len(items), []
    for i, chunk in enumerate(chunks):
        size = remaining // (workers - i)
        remaining -= size
        take = max(0, size - len(chunk))
        order += chunk + rest[:take]
        rest = rest[take:]
    items[:] = order + rest
