#!/usr/bin/env bash
# Submit the engine to a running Ray cluster as a Ray job (RAY_ADDRESS: the cluster's dashboard
# address for `ray job submit`, e.g. http://127.0.0.1:8265). Without a cluster, run instead:
#   python -m dni_dist.train --backend ray --workers K
#   launch/ray_job.sh [K] [options...]
set -euo pipefail
K=${1:-2}; shift || true
exec ray job submit --working-dir . -- python -m dni_dist.train --backend ray --workers "$K" --ray-address auto "$@"
