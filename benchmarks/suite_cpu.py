"""Where the test suite's time goes: CPU (this process and its reaped children, ``getrusage``) and wall time per
test, one test at a time. A pytest plugin, then a summary:

    PYTHONPATH=benchmarks python -m pytest -q -n 0 -p suite_cpu     # writes runs/suite-cpu.json
    python benchmarks/suite_cpu.py [runs/suite-cpu.json]            # per file, then the slowest tests

Processes a test does not reap are not counted: Ray's daemons and actors, the ClientApp processes a SuperNode
starts (a federation test's count can be a sixth of its real CPU); ``benchmarks/machine_cpu.sh`` counts the whole
machine for one command. Results: docs/performance.md, "The test suite".
"""

from __future__ import annotations

import collections
import json
import resource
import sys
import time
from pathlib import Path

import pytest

OUT = Path("runs/suite-cpu.json")
_rows: list[tuple[str, float, float]] = []


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    c0, t0 = _cpu(), time.perf_counter()
    yield
    _rows.append((item.nodeid, round(_cpu() - c0, 2), round(time.perf_counter() - t0, 2)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(_rows))


def main() -> None:
    rows = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else OUT).read_text())
    print(f"total: {sum(r[1] for r in rows):.0f} s CPU over {sum(r[2] for r in rows):.0f} s wall, {len(rows)} tests\n")
    by_file: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for node, cpu, wall in rows:
        f = by_file[node.split("::")[0]]
        f[0], f[1], f[2] = f[0] + cpu, f[1] + wall, f[2] + 1
    print("| file | CPU (s) | wall (s) | tests |\n|---|---:|---:|---:|")
    for name, (cpu, wall, n) in sorted(by_file.items(), key=lambda kv: -kv[1][1])[:15]:
        print(f"| {name} | {cpu:.1f} | {wall:.1f} | {n} |")
    print("\n| test | CPU (s) | wall (s) |\n|---|---:|---:|")
    for node, cpu, wall in sorted(rows, key=lambda r: -r[2])[:15]:
        print(f"| {node} | {cpu:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
