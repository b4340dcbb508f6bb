"""brmtrl sweep --ray: the cells as tasks on a Ray cluster (a head and one worker node on 127.0.0.1, started
and stopped here), with the numbers, resume, summary and failures of a local sweep."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ray_exclusive
from .test_sweep import GRID, numbers, summary, sweep, write_grid

if importlib.util.find_spec("ray") is None:   # imported in the fixture: each xdist worker collects every module
    pytest.skip("ray is not installed", allow_module_level=True)

MIXED = (GRID.replace('"attack.name" = ["sign_flip", "gaussian"]',
                      '"dataset.name" = ["synthetic_classification", "cifar10"]')
         .replace('"train.rounds" = 3', '"train.rounds" = 2\n"dataset.root" = "/nonexistent/cifar"'))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray cluster of two nodes (1 CPU each) on 127.0.0.1; shut down whatever the tests do. Ray replaces a
    loopback address by the machine's own IP unless it runs in its single-machine mode
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read by every Ray process this test starts, the sweep's included)."""
    from ray import cluster_utils

    from brmtrl.flower.ray_start import retry_timed_out_start

    with ray_exclusive(tmp_path_factory), pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setenv("RAY_worker_niceness", "0")   # not Ray's 15: the cells would starve beside the other tests
        # a node whose raylet misses Ray's fixed 15 s for its agent under the suite's load is started again
        c = retry_timed_out_start(lambda: cluster_utils.Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}), "the test's Ray head")
        try:
            retry_timed_out_start(lambda: c.add_node(num_cpus=1, node_ip_address="127.0.0.1"), "the test's Ray node")
            c.wait_for_nodes()
            yield c
        finally:
            c.shutdown()


def ray_sweep(grid: Path, out: Path, address: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as a user runs it (it connects to the cluster as a Ray driver)."""
    return subprocess.run([sys.executable, "-m", "brmtrl", "sweep", "--grid", str(grid), "--out", str(out),
                           "--quiet", "--ray", address, *extra], capture_output=True, text=True, timeout=300)


@pytest.mark.slow(seconds=30)
def test_a_sweep_on_a_ray_cluster_matches_a_local_one_and_resumes(cluster, tmp_path):
    grid = write_grid(tmp_path / "g", MIXED)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert sweep(grid, local, "--threads", "1") == 1                      # two cells fail: no such data
    done = ray_sweep(grid, remote, cluster.address, "--threads", "1")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "4 cells run, 0 already done, 4 failed, 0 left" in done.stdout
    assert "/nonexistent/cifar" in done.stdout                            # the failure, in one line per cell
    assert numbers(remote) == numbers(local)                              # same seeds, same numbers
    rows = summary(remote)
    failed = [name for name, row in rows.items() if row["status"] == "error"]
    assert len(failed) == 4 and all("Traceback" in (remote / n / "error.log").read_text() for n in failed)
    again = ray_sweep(grid, remote, cluster.address, "--threads", "1")
    assert "0 cells run, 4 already done, 4 failed" in again.stdout        # resume: only the failed cells again
    assert numbers(remote) == numbers(local)


@pytest.mark.slow(seconds=5)
def test_a_cell_larger_than_the_cluster_is_a_one_line_error(cluster, tmp_path):
    out = ray_sweep(write_grid(tmp_path / "g"), tmp_path / "ray", cluster.address, "--threads", "64")
    assert out.returncode != 0 and "each cell asks for 64 CPU(s) (--threads) but the cluster has 2" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_cluster_and_gpus_without_ray_are_one_line_errors(tmp_path, capsys):
    """Checked before Ray is imported or any cell runs (no cluster needed)."""
    grid = write_grid(tmp_path / "g")
    assert sweep(grid, tmp_path / "ray2", "--ray", "127.0.0.1:9", "--threads", "1") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ray 127.0.0.1:9: nothing answers there" in err
    assert sweep(grid, tmp_path / "x", "--gpus-per-cell", "1") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--gpus-per-cell is for --ray" in err
