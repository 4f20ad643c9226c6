#!/usr/bin/env bash
# One short GPU check of the Triton FlashAttention kernel (about 3-5 minutes on an H100/H200; at most 240 s of tests + 200 s of benchmark):
#   1. tests/library/test_triton_attention.py on CUDA: float16 (every head_dim) and bfloat16 (64, 128),
#      causal and not, ragged lengths, L != S, against SDPA in float32, forward and gradients
#      (benchmarks/flash_gpu_quick.py is the shorter check with the backward TFLOP/s);
#   2. benchmarks/attention.py on CUDA: time and peak extra memory by N (to 16384) of naive,
#      tiled, SDPA (each backend) and Triton, then TFLOP/s of Triton vs SDPA's flash and cuDNN
#      backends for head_dim 64 and 128, causal and not, with the two target ratios printed;
#      and a plot.
# Usage: benchmarks/triton_gpu_check.sh OUT_DIR      (PYTHON=... to choose the interpreter)
# Writes OUT_DIR/{env.txt, tests.txt, benchmark.txt, attention.png}. Exit status: the tests'.
set -uo pipefail
OUT=${1:?usage: $0 OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # compile for the GPU

{
  date -u
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv 2>&1 || true
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, '|', torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

echo "== tests (float16/bfloat16 vs SDPA) =="
timeout 240 "$PY" -m pytest tests/library/test_triton_attention.py -q -p no:cacheprovider --durations=5 2>&1 | tee "$OUT/tests.txt"
status=${PIPESTATUS[0]}

echo "== benchmark =="
timeout 200 "$PY" benchmarks/attention.py --device cuda --max-n 16384 --repeats 2 \
  --plot "$OUT/attention.png" 2>&1 | tee "$OUT/benchmark.txt"

echo "tests exit status: $status; outputs in $OUT"
exit "$status"
