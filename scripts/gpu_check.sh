#!/usr/bin/env bash
# One device call: the GPU tests (parity at full sizes, torch.compile, autocast), then `gatedrnn bench --device cuda`
# in float32 and bfloat16, one benchmark process per shape so that each table stands on its own.
# Usage (from the repo root): OUT=/some/dir scripts/gpu_check.sh [pytest -k expression] [bench arguments...]
# Environment:
#   TEST_TIMEOUT    seconds for the test stage (default 600), so that the benchmark always gets its turn
#   BENCH_TIMEOUT   seconds for each benchmark process (default 300)
#   WORKERS         pytest-xdist workers for the test stage (default: none; the device image has xdist)
#   SHAPES          comma-separated BxTxIxH shapes to benchmark (default: the CUDA grid of `gatedrnn bench`)
# Everything lands in $OUT/gpu_check.tgz (logs, junit XML, one JSON per benchmark); the test summary and the
# benchmark tables are also printed.
set -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1
K=${1:-}
shift || true
SHAPES=${SHAPES:-1x512x256x256,16x256x512x512,64x256x1024x1024,256x128x1024x1024}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$WORK/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$WORK/device.txt"
start=$SECONDS
timeout "${TEST_TIMEOUT:-600}" python3 -m pytest tests/test_gpu_engine.py tests/test_bench_gpu.py -v -rfE \
  --maxfail=20 -p no:cacheprovider ${WORKERS:+-n "$WORKERS"} ${K:+-k "$K"} --junitxml="$WORK/tests.xml" \
  >"$WORK/tests.log" 2>&1
echo "test stage: exit $?, $((SECONDS - start)) s"
grep -E "^(FAILED|ERROR)|passed|failed" "$WORK/tests.log" | tail -30
for dtype in float32 bfloat16; do
  for shape in ${SHAPES//,/ }; do
    start=$SECONDS
    timeout "${BENCH_TIMEOUT:-300}" python3 -m gatedrnn.bench --device cuda --dtype "$dtype" --shapes "$shape" \
      --json "$WORK/bench_${dtype}_${shape}.json" "$@" >"$WORK/bench_${dtype}_${shape}.log" 2>&1
    echo "bench $dtype $shape: exit $?, $((SECONDS - start)) s"
    grep -v "round" "$WORK/bench_${dtype}_${shape}.log" | grep -E "^ *[0-9]+,|Error|error" | grep -E "gpu|torch.nn|rror"
  done
done
tar czf "$OUT/gpu_check.tgz" -C "$WORK" .
