"""The warm ClientApp worker's loop (brmtrl.flower.warm_worker.serve) against a stand-in Runtime API: the
real one is exercised by tests/test_deploy.py's federations."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("flwr")

from brmtrl.flower import warm_worker  # noqa: E402


class _Reply:
    def __init__(self, task: bool):
        self.token = "t" if task else ""
        self.task = SimpleNamespace(task_id=1)
        self._task = task

    def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's name
        return name == "task" and self._task


class _Control:
    """Answers AcquireTask from a script: True where a task is waiting."""

    def __init__(self, script: list[bool]):
        self.script = list(script)

    def AcquireTask(self, _request):  # noqa: N802 - the Runtime API's name
        return _Reply(self.script.pop(0))

    def close(self) -> None:
        pass


@pytest.fixture
def stand_in(monkeypatch):
    """serve() with a scripted Runtime API: a runner (script, serve's keywords -> tasks run), the recorded
    sleeps and the tasks' tokens."""
    sleeps: list[float] = []
    tasks: list[str] = []
    fl = {"AcquireTaskRequest": lambda **kw: kw, "TaskType": SimpleNamespace(CLIENT_APP="clientapp")}
    monkeypatch.setattr(warm_worker, "_flower", lambda: fl)
    monkeypatch.setattr(warm_worker.time, "sleep", sleeps.append)
    monkeypatch.setattr(warm_worker, "run_task", lambda _fl, _app, _addr, token, *_: tasks.append(token))

    def run(script: list[bool], **kw) -> int:
        monkeypatch.setattr(warm_worker, "_client", lambda *a, **k: _Control(script))
        return warm_worker.serve("127.0.0.1:1", **kw)

    return run, sleeps, tasks


def test_an_idle_worker_asks_less_and_less_often_and_quickly_again_after_a_task(stand_in):
    run, sleeps, tasks = stand_in
    idle, busy = [False] * 6, [True]
    assert run(idle + busy + [False, False] + busy, max_tasks=2) == 2 and tasks == ["t", "t"]
    # 0.1 s when none came, doubled while none comes, never beyond 0.5 s; from 0.1 s again after each task
    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.1, 0.2])
    sleeps.clear()
    assert run([False] * 4 + busy, max_tasks=1, poll_s=0.05, max_poll_s=0.05) == 1
    assert sleeps == pytest.approx([0.05] * 4)                        # a fixed interval, as before


def test_poll_intervals_are_checked(stand_in):
    run, _, _ = stand_in
    with pytest.raises(warm_worker.WarmWorkerError, match=r"--poll \(1.0\) <= --max-poll \(0.5\)"):
        run([], poll_s=1.0, max_poll_s=0.5)
    with pytest.raises(warm_worker.WarmWorkerError, match="0 < --poll"):
        run([], poll_s=0.0)
