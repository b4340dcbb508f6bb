#!/usr/bin/env bash
# The GPU checks of issue 20 in one call, for a session lent a GPU machine (the `device` tool): the test suite
# on CUDA's machine, then one round of the paper's CIFAR-10 setting on the GPU against its FLOP bound
# (benchmarks/round_speed.py). Prepared here, never run on a GPU yet (no session has been lent one).
#
# Here, once (CIFAR-10's parquet files, 56 MB, travel with the working tree; the repository is about 4 MB):
#   mkdir -p .device && cp -r ../shared/data/cifar10 .device/ && echo /.device/ >> .git/info/exclude
# Then the device's run: command `bash benchmarks/device_check.sh`, carry [".device"], timeout_s 540.
#
# That machine's image has python3 with a CUDA build of torch, pytest, pytest-xdist, hypothesis and Numba, but
# not Flower, Ray or import-linter: their tests skip (the import-linter contract does not depend on the
# device and is deselected), and the tests that read ../shared/data skip (it does not travel). Outputs go to
# $OUT (the device tool's folder; runs/device here).
#
# Tried on this CPU machine (2026-12-04, no CUDA: every step runs on the CPU):
#   OUT=/tmp/devchk PYTHON=.venv/bin/python CIFAR_ROOT=../shared/data/cifar10 bash benchmarks/device_check.sh
# printed `663 passed, 5 warnings in 189.47s` (one deselected) and the round of benchmarks/round_speed.out.md;
# exit 0, about 8 minutes on 2 cores.
set -uo pipefail
OUT=${OUT:-runs/device}
PY=${PYTHON:-python3}
ROOT=${CIFAR_ROOT:-.device/cifar10}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{ nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not here"
  "$PY" -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, 'CUDA', c, torch.cuda.get_device_name(0) if c else '')"
} 2>&1 | tee "$OUT/device.txt"

echo "== the test suite" | tee "$OUT/pytest.log"
timeout 300 "$PY" -m pytest -q -o addopts="-ra" -n 8 -p xdist -p no:cacheprovider \
    --deselect tests/test_layers.py::test_import_contracts_hold 2>&1 | tee -a "$OUT/pytest.log"
suite=$?

echo "== one round of the paper's CIFAR-10 setting" | tee "$OUT/round_speed.md"
if [ -f "$ROOT/train.parquet" ]; then
  timeout 200 "$PY" benchmarks/round_speed.py --root "$ROOT" --repeats 2 --device auto 2>&1 | tee -a "$OUT/round_speed.md"
  round=$?
else
  echo "no CIFAR-10 at $ROOT (see this script's header)" | tee -a "$OUT/round_speed.md"
  round=1
fi
echo "suite exit $suite, round exit $round" | tee -a "$OUT/device.txt"
exit $(( suite || round ))
