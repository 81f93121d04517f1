#!/usr/bin/env bash
# One device call: the GPU tests (parity at full sizes, torch.compile, autocast), then `gatedrnn bench --device cuda`
# in float32 and bfloat16; logs and JSON under $OUT.
# Usage (from the repo root): OUT=/some/dir scripts/gpu_check.sh [pytest -k expression] [bench arguments...]
# TEST_TIMEOUT (seconds, default 600) bounds the test stage so that the benchmark always gets its turn.
# A device call is limited to 10 minutes, so select: e.g. the layer-norm and projected variants (their kernels were
# verified in the interpreter and compiled for sm_90 by scripts/compile_check.py, never run on a device before):
#   TEST_TIMEOUT=300 OUT=$OUT scripts/gpu_check.sh "layernorm or proj" \
#     --variants lstm,lstm-layernorm,gru-layernorm,rnn-layernorm,lstm-proj --repeats 5
set -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
K=${1:-}
shift || true
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
timeout "${TEST_TIMEOUT:-600}" python3 -m pytest tests/test_gpu_engine.py tests/test_bench_gpu.py -q --maxfail=5 \
  -p no:cacheprovider ${K:+-k "$K"} --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log" | tail -25
for dtype in float32 bfloat16; do
  python3 -m gatedrnn.bench --device cuda --dtype "$dtype" --json "$OUT/bench_$dtype.json" "$@" 2>&1 \
    | tee "$OUT/bench_$dtype.log" | tail -120
done
