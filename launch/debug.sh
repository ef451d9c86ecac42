#!/usr/bin/env bash
# Debug mode: one process simulates K workers (default 2). Extra options go to dni_dist.train.
#   launch/debug.sh [K] [options...]        e.g. launch/debug.sh --steps 20   or   launch/debug.sh 4 --steps 20
set -euo pipefail
K=2
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then K=$1; shift; fi
exec python -m dni_dist.train --workers "$K" "$@"
