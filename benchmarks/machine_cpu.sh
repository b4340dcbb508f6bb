#!/usr/bin/env bash
# Wall time and the whole machine's CPU time (user + nice + system, from /proc/stat) while a command runs:
# counts every process it starts, also those it does not reap (Ray's daemons, a SuperNode's ClientApp
# processes), which benchmarks/suite_cpu.py (getrusage of the test process and its reaped children) misses.
# Meaningful only on an otherwise idle machine.
#   bash benchmarks/machine_cpu.sh python -m pytest -q -n 0 tests/test_flower.py -k simulation_matches
set -uo pipefail
read -r _ u n s _ < /proc/stat; t0=$(date +%s.%N)
"$@"; rc=$?
read -r _ u2 n2 s2 _ < /proc/stat; t1=$(date +%s.%N)
python3 -c "print(f'exit {$rc}: wall {$t1 - $t0:.1f} s, machine CPU {(($u2 + $n2 + $s2) - ($u + $n + $s)) / 100:.1f} s')"
exit $rc
