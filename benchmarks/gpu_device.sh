#!/usr/bin/env bash
# The GPU benchmark on a lent GPU machine, in one call (see docs/performance.md#gpu-benchmark):
#   here:  bash benchmarks/gpu_wheels.sh     (once: langlift's requirements the machine lacks, into .whl/)
#   there: bash benchmarks/gpu_device.sh     (device tool: carry [".whl"], timeout_s 600)
# Installs the carried wheels into /tmp/site, then runs benchmarks/gpu.py within BUDGET seconds (each section
# in its own process under a time guard); the JSON, the log and nvidia-smi's line land in $OUT (or
# benchmarks/results/ without $OUT). Extra arguments go to gpu.py (e.g. --only lora-llama-2-7b).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/nvidia-smi.txt"
$PY benchmarks/gpu.py --out "$OUT" --budget "${BUDGET:-450}" "$@" 2>&1 | tee "$OUT/gpu.log"
