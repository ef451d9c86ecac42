#!/usr/bin/env bash
# One short check on a lent GPU machine (never needed for CI): the single-GPU engine's
# throughput for TBPTT and DNI, the NCCL path under torchrun, and the CPU test suite's core
# on that machine's PyTorch. Results land in $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
run() { echo "== $*"; timeout 240 "$@" 2>&1 | grep -v "^W1\|^\*\*\*\*" | tail -3; }
for size in "256 32" "1024 256"; do
  set -- $size
  for mode in tbptt dni; do
    run python3 -m dni_dist.train --device cuda --hidden $1 --batch $2 --truncation 16 --chunks 8 --steps 40 \
      --mode $mode --no-progress --metrics-json "$OUT/gpu_H$1_B$2_$mode.json"
    run python3 -m dni_dist.train --device cpu --hidden $1 --batch $2 --truncation 16 --chunks 8 --steps 4 \
      --mode $mode --no-progress --metrics-json "$OUT/cpu16_H$1_B$2_$mode.json"
  done
done
run torchrun --standalone --nproc-per-node 1 -m dni_dist.train --device cuda --workers 1 --hidden 256 --batch 32 \
  --truncation 16 --chunks 8 --steps 20 --no-progress --metrics-json "$OUT/nccl_k1.json"
run python3 -m pytest -q -p no:cacheprovider tests/test_synthesizer.py tests/test_errors.py
