"""The CPU a command's processes use, summed by kind of process (pytest's workers, Flower's SuperLink,
SuperNodes, ServerApps, ClientApps, brmtrl's CLIs and warm workers, Ray's daemons, ...): every process on
the machine is sampled from /proc twice a second while the command runs, each one's last CPU time kept, so
processes nobody reaps (Ray's, those a SuperNode starts) count too. Processes already running when it starts
are not counted (their CPU meanwhile is printed on its own, as a measure of what else the machine did). Linux only; meaningful on an otherwise
idle machine (the sampling itself costs about 1 % of a core). A process that lives under half a second may
be missed.

    python benchmarks/process_cpu.py -- python -m pytest -q

Results: docs/performance.md, "The test suite".
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")

#: (what the command line contains, the kind), first match wins
KINDS = [
    ("exec(eval(sys.stdin.readline()))", "pytest-xdist worker"),
    ("flower-superlink", "Flower SuperLink"),
    ("flower-supernode", "Flower SuperNode"),
    ("flower-superexec", "Flower SuperExec"),
    ("flwr-serverapp", "Flower ServerApp process"),
    ("flwr-clientapp", "Flower ClientApp process (one per message)"),
    ("flwr ", "flwr CLI (run, supernode register)"),
    ("brmtrl.flower.warm_worker", "brmtrl warm ClientApp worker"),
    ("multiprocessing", "sweep worker (multiprocessing spawn)"),
    ("-m brmtrl", "brmtrl CLI"),
    ("ray::", "Ray process (daemons, workers)"),   # a Ray worker is first seen as .../ray/.../default_worker.py
    ("raylet", "Ray process (daemons, workers)"),
    ("gcs_server", "Ray process (daemons, workers)"),
    ("/ray/", "Ray process (daemons, workers)"),
    ("-m pytest", "pytest (controller)"),
    ("python", "other Python process"),
]


def kind(cmdline: str) -> str:
    return next((k for needle, k in KINDS if needle in cmdline), "other")


def sample(seen: dict[tuple[str, str], list], me: int) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            key = (pid, fields[19])                      # pid and start time: one process
            if key not in seen:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    seen[key] = [0.0, kind(fh.read().replace(b"\0", b" ").decode(errors="replace"))]
        except OSError:
            continue
        seen[key][0] = max(seen[key][0], (int(fields[11]) + int(fields[12])) / TICK)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command to measure after --")
    seen: dict[tuple[str, str], list] = {}
    me = os.getpid()
    sample(seen, me)
    before = {key: cpu for key, (cpu, _) in seen.items()}    # what was running already counts from now on
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        sample(seen, me)
        time.sleep(0.5)
    sample(seen, me)
    wall = time.perf_counter() - start
    per_kind: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for key, (cpu, k) in seen.items():
        if key not in before:                                  # started while the command ran
            per_kind[k][0] += cpu
            per_kind[k][1] += 1
    total = sum(v[0] for v in per_kind.values())
    elsewhere = sum(cpu - before[key] for key, (cpu, _) in seen.items() if key in before)
    print(f"\n`{' '.join(cmd)}`: exit {proc.returncode}, wall {wall:.1f} s, CPU of the processes started meanwhile "
          f"{total:.1f} s ({total / wall:.2f} cores busy on average); processes already running used {elsewhere:.1f} s\n")
    print("| kind of process | processes | CPU (s) | share |")
    print("|---|---:|---:|---:|")
    for k, (cpu, n) in sorted(per_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"| {k} | {int(n)} | {cpu:.1f} | {cpu / total:.0%} |")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
