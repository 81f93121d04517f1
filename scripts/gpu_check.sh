#!/usr/bin/env bash
# One device call: GPU parity tests (full sizes, torch.compile, autocast) then the benchmark; results under $OUT.
# Usage (from the repo root): OUT=/some/dir scripts/gpu_check.sh [pytest -k expression] [bench arguments...]
set -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
K=${1:-}
shift || true
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
timeout ${TEST_TIMEOUT:-600} python3 -m pytest tests/test_gpu_engine.py -q --maxfail=5 -p no:cacheprovider ${K:+-k "$K"} --junitxml="$OUT/tests.xml" 2>&1 \
  | tee "$OUT/tests.log" | tail -25
python3 scripts/gpu_bench.py --out "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log" | tail -80
