#!/usr/bin/env bash
# Debug mode: one process simulates K workers (default 2). Extra options go to dni_dist.train.
#   launch/debug.sh [K] [options...]
set -euo pipefail
K=${1:-2}; shift || true
exec python -m dni_dist.train --workers "$K" "$@"
