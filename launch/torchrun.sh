#!/usr/bin/env bash
# One worker per process on this machine (gloo on CPU; add --device cuda for NCCL, one GPU each).
#   launch/torchrun.sh [K] [options...]      e.g. launch/torchrun.sh 2 --checkpoint-dir ck --checkpoint-every 50
set -euo pipefail
K=${1:-2}; shift || true
exec torchrun --standalone --nproc-per-node "$K" --max-restarts "${MAX_RESTARTS:-0}" -m dni_dist.train --workers "$K" "$@"
