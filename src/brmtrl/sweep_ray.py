"""Sweep cells as tasks on an existing Ray cluster (``brmtrl sweep --ray ADDRESS``).

The same cells, resume, summary and failure semantics as ``--workers`` (:mod:`brmtrl.sweep`): each cell is
one Ray task that runs :func:`brmtrl.sweep.run_cell` on whichever node the cluster schedules it, asking for
``threads`` CPUs (and ``gpus`` GPUs); finished cells are skipped by the sweep before any task is sent; a
task whose worker dies is an error of that cell (no retry: starting the sweep again continues it from its
checkpoint). What the cluster must provide: brmtrl (and the data a config reads) installed on every node,
and the sweep directory on a file system every node sees at the same path (each task writes its cell's
folder there, as a worker process does). When the sweep process ends, Ray ends its tasks.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from typing import Any, Callable

from .sweep_layout import GridError

__all__ = ["execute_on_ray"]

log = logging.getLogger("brmtrl")


def _connect(address: str) -> Any:
    try:
        import ray
    except ImportError:
        raise GridError("--ray needs Ray: pip install 'brmtrl[flower]' (or ray) on this machine and the "
                        "cluster's nodes") from None
    if not ray.is_initialized():
        _reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - ConnectionError and Ray's own errors: one line
            raise GridError(f"--ray {address}: cannot connect to a Ray cluster there "
                            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
                            ) from None
    return ray


def _reachable(address: str) -> None:
    """Fail in seconds, with one line, when nothing listens at host:port (Ray itself retries for minutes)."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    host = host.removeprefix("ray://").strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=10):
            pass
    except (OSError, ValueError) as exc:
        raise GridError(f"--ray {address}: nothing answers there ({type(exc).__name__}: {exc}); expected the "
                        "host:port of a Ray cluster's head (ray start --head prints it)") from None


def execute_on_ray(address: str, jobs: Sequence[tuple[str, str, dict[str, Any]]], run_cell: Callable[..., dict[str, Any]],
                   *, threads: int, gpus: float, force: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run ``jobs`` (name, cell folder, config values) as Ray tasks on the cluster at ``address``; yield
    (name, outcome) as each finishes, in the order they finish."""
    ray = _connect(address)
    resources = ray.cluster_resources()
    if float(resources.get("CPU", 0)) < threads:
        raise GridError(f"--ray {address}: each cell asks for {threads} CPU(s) (--threads) but the cluster has "
                        f"{resources.get('CPU', 0):g}")
    if gpus and float(resources.get("GPU", 0)) < gpus:
        raise GridError(f"--ray {address}: each cell asks for {gpus:g} GPU(s) but the cluster has "
                        f"{resources.get('GPU', 0):g}")
    task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(run_cell)
    pending = {task.remote(folder, values, False, force): name for name, folder, values in jobs}
    log.info("sweep: %d cells sent to the Ray cluster at %s", len(pending), address)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            name = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task's worker or node died
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                outcome = {"status": "error", "error": f"worker died: {type(exc).__name__}: {first}", "wall_s": 0.0}
            yield name, outcome
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)

