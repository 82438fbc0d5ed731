#!/bin/sh
# bench/gpu/run.sh — one DPO step of a 1B Llama (sequences of 1024, vocabulary 32k and
# 128k) and of a Qwen2.5-0.5B-shaped model on one GPU: poc fused and unfused (poc bench
# --backend cuda), a hand-written PyTorch bf16 step, TRL's DPOTrainer and TRL with Liger's
# kernels, on the same data; tokens/s, peak device memory and MFU against the bf16 GEMM
# peak poc measures. One call of under 8 minutes on an H100/H200: poc is built while the
# models are written, and bench/gpu/run.py gives each variant a time cap and skips (saying
# so in the table) whatever the budget no longer leaves time for. Writes
# bench/results/gpu_<device>.md and .json.
#
#   bench/gpu/run.sh [MODELS]   (default llama-1b-128k,llama-1b-32k,qwen2.5-0.5b)
# knobs: BUDGET seconds for the whole call (default 450), WORK (models, data, runs;
#        default $TMPDIR/poc-gpu-bench), BUILD_DIR (default build-bench-gpu)
set -eu
start=$(date +%s)
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$root/build-bench-gpu}
work=${WORK:-${TMPDIR:-/tmp}/poc-gpu-bench}
budget=${BUDGET:-450}
models=${1:-llama-1b-128k,llama-1b-32k,qwen2.5-0.5b}
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "bench/gpu/run.sh: no nvidia-smi here; this benchmark needs a CUDA GPU" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p "$work"
python3 "$root/bench/gpu/run.py" prepare "$work" --models "$models" >"$work/prepare.log" 2>&1 &
prep=$!
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target poc -j"$(nproc)"
if ! wait "$prep"; then
  cat "$work/prepare.log" >&2
  exit 1
fi
echo "bench/gpu/run.sh: built and prepared in $(($(date +%s) - start)) s"
python3 "$root/bench/gpu/run.py" measure "$work" --models "$models" --poc "$build/poc" \
  --deadline "$((start + budget))"
echo "bench/gpu/run.sh: $(($(date +%s) - start)) s in all"
