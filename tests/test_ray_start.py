"""Starting a simulation's Ray instance: a start that times out (Ray's raylet gives its dashboard agent a fixed
15 s, ray-project/ray#65983) is cleaned up and tried again; nothing else is retried or touched."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brmtrl.flower import ray_start
from brmtrl.flower.errors import FederationError

TIMEOUT = ("The current node timed out during startup. This could happen because some of the raylet failed "
           "to startup or the GCS has become overloaded.")


def sleeper(tag: str) -> subprocess.Popen:
    """A child process whose command line names a Ray session directory, as a Ray start's processes do;
    returned once it runs that command (before its exec it still has this process's command line)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"/tmp/ray/session_{tag}"])
    deadline = time.monotonic() + 60
    while b"/ray/" not in Path(f"/proc/{p.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    return p


def running(p: subprocess.Popen) -> bool:
    try:
        os.kill(p.pid, 0)
    except ProcessLookupError:
        return False
    return p.poll() is None


def test_a_timed_out_start_is_cleaned_up_and_tried_again(caplog):
    older = sleeper("older")                  # not started by the failing try: left alone
    left: list[subprocess.Popen] = []
    calls = []

    def start():
        calls.append(1)
        if len(calls) == 1:
            left.append(sleeper("failed"))    # what a timed-out start leaves running
            raise Exception(TIMEOUT)
        return "ray"

    try:
        with caplog.at_level(logging.WARNING, logger="brmtrl"):
            assert ray_start.retry_timed_out_start(start, "the test") == "ray"
        assert len(calls) == 2
        assert not running(left[0])           # stopped and reaped
        assert running(older)
        assert "timed out" in caplog.text and "ray-project/ray#65983" in caplog.text
    finally:
        for p in (older, *left):
            p.kill()
            p.wait()


def test_other_errors_are_not_retried_and_the_last_timeout_names_its_cause():
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("bad init argument")

    with pytest.raises(ValueError, match="bad init argument"):
        ray_start.retry_timed_out_start(broken, "the test")
    assert len(calls) == 1

    left: list[subprocess.Popen] = []

    def always_late():
        left.append(sleeper(f"late{len(left)}"))
        raise Exception(TIMEOUT)

    try:
        with pytest.raises(FederationError, match=r"the test: Ray did not start in 2 tries .*ray-project/ray#65983"):
            ray_start.retry_timed_out_start(always_late, "the test", attempts=2)
        assert len(left) == 2 and not any(running(p) for p in left)
    finally:
        for p in left:
            p.kill()
            p.wait()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_start_ray_starts_ray_as_flower_would_and_only_once(monkeypatch):
    import ray   # here, not at collection: each xdist worker collects every module (ray costs ~1 s of CPU)

    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(seen))
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(kw))
    monkeypatch.setenv("PYTHONPATH", "/extra")
    assert ray_start.start_ray({"address": "local", "num_cpus": 2})
    assert not ray_start.start_ray({"address": "local", "num_cpus": 2})    # already running: nothing started
    (kw,) = seen
    assert kw["address"] == "local" and kw["num_cpus"] == 2 and kw["include_dashboard"] is False
    path = kw["runtime_env"]["env_vars"]["PYTHONPATH"].split(os.pathsep)
    assert path[:len(sys.path)] == sys.path and path[-1] == "/extra"   # the ClientApps import what this process can
