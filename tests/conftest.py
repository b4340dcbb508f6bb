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

# one torch thread per xdist worker (four share the cores), two in a plain run
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))


def need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data {path} not present")


@pytest.fixture
def numpy_path(monkeypatch):
    """The aggregators' numpy/torch path even where Numba is installed (brmtrl.aggregators.kernels off):
    for tests of that path's own column blocks. tests/test_kernels.py checks that the kernels agree with it."""
    from brmtrl.aggregators import kernels

    monkeypatch.setattr(kernels, "_load", lambda: (None, "off (test)"))


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
            "flower.backend_cpus=1",   # Flower's simulation: one ClientApp actor (each costs an import of torch)
        ]
        return load_config(None, base + list(overrides))

    return make


def session_dir(factory: pytest.TempPathFactory) -> Path:
    """A folder of this test session that its xdist workers share (the parent of their temp folders;
    a plain run's own temp folder)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def locked(path: Path):
    """An exclusive lock on the file ``path`` across the session's processes."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def ray_exclusive(factory: pytest.TempPathFactory):
    """One Ray instance at a time across the xdist workers (a lock file beside their temp folders): a Ray
    node starting beside another under the suite's load can miss Ray's fixed 30 s registration deadline
    ("The current node timed out during startup"). The scheduler below also puts every Ray test in one
    worker's chunk, so the lock rarely waits."""
    with locked(session_dir(factory) / "ray.lock"):
        yield


@pytest.fixture
def one_ray_at_a_time(tmp_path_factory: pytest.TempPathFactory):
    """For a test that runs Flower's simulation engine (Ray): see :func:`ray_exclusive`."""
    with ray_exclusive(tmp_path_factory):
        yield


def _uses_ray(item: pytest.Item) -> bool:
    return "one_ray_at_a_time" in getattr(item, "fixturenames", ()) or item.path.name == "test_sweep_ray.py"


def _waits(item: pytest.Item) -> float | None:
    """A test that mostly waits on processes it starts (real federations, Ray), marked
    ``slow(seconds=N)``: N is its wall time alone on 2 cores, its weight when the suite is scheduled; None
    for a test that computes."""
    mark = item.get_closest_marker("slow")
    if mark is None:
        return None
    return float(mark.kwargs.get("seconds", 20.0))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, start the waiting tests first and spread them over the workers by their weight.
    ``--dist worksteal`` hands each of the W workers a contiguous chunk of the collection (sizes as computed
    here) and idle workers steal from the tails of the others; a worker runs the head of its own chunk one
    test after another, so the suite's wall time is bounded by the longest chain of waits at a chunk's head.
    The waiting tests go longest first to the chunk with the least waiting so far (LPT scheduling); tests
    sharing a module-scoped fixture stay together (one Ray cluster per module, not per worker), and so do
    the tests that start Ray; every other test keeps its place in file order."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2 or len(items) < 2 * workers:
        return
    units: dict[str, list[pytest.Item]] = {}
    rest: list[pytest.Item] = []
    for item in items:
        if _waits(item) is None:
            rest.append(item)
            continue
        info = getattr(item, "_fixtureinfo", None)
        shared = info is not None and any(defs and defs[-1].scope == "module"
                                          for defs in info.name2fixturedefs.values())
        units.setdefault(item.module.__name__ if shared and item.module else item.nodeid, []).append(item)
    # the Ray tests run one at a time anyway (ray_exclusive): one unit, on one worker, not a chain of
    # waits for the lock on several
    ray = [item for key in [k for k, u in units.items() if _uses_ray(u[0])] for item in units.pop(key)]
    if ray:
        units["ray"] = ray
    def weight(unit: list[pytest.Item]) -> float:
        return sum(_waits(item) or 0.0 for item in unit)

    chunks: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for unit in sorted(units.values(), key=weight, reverse=True):
        k = min(range(workers), key=load.__getitem__)
        chunks[k].extend(unit)
        load[k] += weight(unit)
    remaining, order = len(items), []
    for i, chunk in enumerate(chunks):
        size = remaining // (workers - i)
        remaining -= size
        take = max(0, size - len(chunk))
        order += chunk + rest[:take]
        rest = rest[take:]
    items[:] = order + rest
