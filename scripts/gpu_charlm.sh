#!/usr/bin/env bash
# Train the character-level LM on a large text on one GPU for N minutes; print the best validation loss and the
# training throughput. Runs from the repository root without installing anything (PYTHONPATH=src).
#
#   scripts/gpu_charlm.sh TEXT [MINUTES=8] [DEVICE=cuda] [extra `gatedrnn charlm train` options...]
#
# e.g. cat ../shared/data/shakespeare/works/*.txt > works.txt && scripts/gpu_charlm.sh works.txt 10
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || ! -f "$1" ]]; then
    echo "usage: $0 TEXT [MINUTES=8] [DEVICE=cuda] [charlm train options...]  (TEXT must be a file)" >&2
    exit 2
fi
text=$1
minutes=${2:-8}
device=${3:-cuda}
shift $(( $# < 3 ? $# : 3 ))
out=$(mktemp -d "${TMPDIR:-/tmp}/gpu_charlm.XXXXXX")
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
python -c "import torch; print('torch', torch.__version__, '| device:', torch.cuda.get_device_name(0) if '$device'.startswith('cuda') else '$device')"
# A wider, deeper model and larger batches than the CPU default: 5 MB of text, and the GPU is idle on small matmuls.
python -m gatedrnn charlm train --text "$text" --device "$device" --minutes "$minutes" --out "$out" \
    --layers 3 --hidden 512 --embed 128 --dropout 0.2 --batch 128 --seq-len 128 --lr 2e-3 --weight-decay 0.1 \
    --eval-every 250 --sample-length 300 "$@" | tee "$out/train.log"
python - "$out" <<'PY'
import json, math, sys
history = json.load(open(f"{sys.argv[1]}/history.json"))
best = min(history, key=lambda h: h["val_nats"])
last = history[-1]
config = json.load(open(f"{sys.argv[1]}/config.json"))["config"]
chars = last["step"] * config["batch"] * config["seq_len"]
print(f"best validation loss: {best['val_nats']:.4f} nats/char ({best['val_nats'] / math.log(2):.4f} bits/char) "
      f"at step {best['step']} ({best['elapsed']:.0f} s)")
print(f"throughput: {chars / last['elapsed']:,.0f} characters/s over {last['step']} steps "
      f"({last['elapsed']:.0f} s, evaluations included)")
PY
echo "run directory: $out"
