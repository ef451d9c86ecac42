#!/usr/bin/env bash
# Submit the engine to a running Ray cluster as a Ray job (needs `pip install 'dni_dist[ray]'`,
# which brings ray[default]; RAY_ADDRESS: the cluster's job address for `ray job submit`, e.g.
# http://127.0.0.1:8265). Without a cluster, run instead: python -m dni_dist.train --backend ray
#   launch/ray_job.sh [K] [options...]
set -euo pipefail
K=2
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then K=$1; shift; fi
exec ray job submit --working-dir . -- python -m dni_dist.train --backend ray --workers "$K" --ray-address auto "$@"
