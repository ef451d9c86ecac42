#!/usr/bin/env bash
# One worker per process on this machine, every listening socket on loopback (gloo on CPU; add
# --device cuda for NCCL, one GPU each). The worker count is torchrun's world size.
#   launch/torchrun.sh [K] [options...]      e.g. launch/torchrun.sh 2 --checkpoint-dir ck --checkpoint-every 50
# torchrun's stores bind every interface by default; dni_dist.torchrun_local binds them to
# 127.0.0.1 (SECURITY.md: What listens where). Several machines: call torchrun yourself with
# --nnodes and --rdzv-endpoint HOST:PORT (README).
set -euo pipefail
K=2
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then K=$1; shift; fi
PORT=${PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}
exec python -m dni_dist.torchrun_local --nnodes 1 --nproc-per-node "$K" --rdzv-backend c10d \
    --rdzv-endpoint "127.0.0.1:$PORT" --rdzv-conf is_host=true --local-addr 127.0.0.1 \
    --max-restarts "${MAX_RESTARTS:-0}" -m dni_dist.train "$@"
