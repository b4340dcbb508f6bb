"""Starting the Ray instance of a Flower simulation, with retries for a start that times out.

Ray's raylet waits a fixed 15 s for its dashboard agent (a Python process it spawns) to report its ports,
and exits if the report is late (ray-project/ray#65983); ``ray.init`` then fails after 30 s with "The current
node timed out during startup" and leaves the rest of that start running (the GCS server, the dashboard,
the monitors). On a busy machine (a test suite, other jobs) the agent's imports can take longer than
15 s. :func:`start_ray` starts Ray as Flower's Ray backend would (Flower then uses the instance it finds),
stops what a timed-out start left and tries again; the load that slowed the agent is usually gone.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import FederationError

__all__ = ["RAY_START_ATTEMPTS", "TIMED_OUT", "ray_children", "retry_timed_out_start", "start_ray", "stop_processes"]

log = logging.getLogger("brmtrl")

RAY_START_ATTEMPTS = 3
#: what ``ray.init`` (and a Ray cluster's ``add_node``) raise when a node's raylet did not come up in time
TIMED_OUT = "timed out during startup"


def ray_children() -> set[int]:
    """This process's child processes that belong to Ray (its package or a session directory on their
    command line); empty where /proc does not list children (not Linux)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").glob("*/children"):
        try:
            pids.update(int(p) for p in task.read_text().split())
        except (OSError, ValueError):
            continue
    out = set()
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"/ray/" in cmd:
            out.add(pid)
    return out


def stop_processes(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM each of this process's children ``pids``, SIGKILL those still running after ``grace``
    seconds, and reap them all (no zombies)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    left = set(pids)
    while left:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:          # not ours to reap, or already reaped
                done = pid
            if done:
                left.discard(pid)
        if not left:
            return
        if time.monotonic() > deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            return
        time.sleep(0.05)


def retry_timed_out_start(start: Callable[[], Any], what: str, attempts: int = RAY_START_ATTEMPTS) -> Any:
    """``start()`` until it does not fail with Ray's startup timeout, at most ``attempts`` times; after each
    timed-out try the Ray processes it left are stopped. Any other error is raised at once; the last
    timeout as a :class:`FederationError` that names the cause."""
    for attempt in range(1, attempts + 1):
        before = ray_children()
        try:
            return start()
        except Exception as exc:   # Ray raises a bare Exception for this
            if TIMED_OUT not in str(exc):
                raise
            stop_processes(ray_children() - before)
            if attempt == attempts:
                raise FederationError(
                    f"{what}: Ray did not start in {attempts} tries (its raylet waits a fixed 15 s for its "
                    "dashboard agent, ray-project/ray#65983): the machine is too busy; see the raylet.err of "
                    "the newest session under Ray's temp dir (/tmp/ray)") from exc
            log.warning("%s: Ray's start timed out (a busy machine, ray-project/ray#65983); trying again "
                        "(%d of %d)", what, attempt + 1, attempts)
    raise AssertionError("unreachable")


def start_ray(init_args: dict[str, Any], attempts: int = RAY_START_ATTEMPTS) -> bool:
    """Start this process's Ray instance with ``init_args`` as Flower's Ray backend does (no dashboard
    unless asked; the ClientApps' workers get this process's ``sys.path`` as their PYTHONPATH, so that
    plug-in modules import there), retrying a start that times out (module docstring). False if Ray was
    already running here (then nothing is started)."""
    import ray

    if ray.is_initialized():
        return False
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath          # as Flower does: Ray's own subprocesses inherit it
    args = {"include_dashboard": False, **init_args}
    retry_timed_out_start(lambda: ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **args),
                          "the Flower simulation", attempts)
    return True
