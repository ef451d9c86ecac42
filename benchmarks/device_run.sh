#!/usr/bin/env bash
# The one prepared call on a lent GPU machine (1 GPU + 16 CPU cores), about 9 minutes; never needed
# for CI. Every result row is printed to stdout (and kept in $OUT). First, alone on the GPU (<= 3 min):
#   (0) benchmarks/gpu_cost.py: ms and host-device syncs per update, TBPTT vs DNI, seed API and engine,
#       alone and four jobs sharing the GPU (PART=gpu_cost runs only this; DEVICE=cpu runs its --smoke form).
# Then two things run side by side on disjoint cores (pinned with taskset):
#   (a) issue 13's 16-core rows: benchmarks/scaling.py for K = 1, 8, 4, 2 (that order; CONFIGS picks
#       the configurations; a run cut by the time limit keeps the rows it finished) on SCALE_CORES;
#   (b) issue 10's paper-scale run: the copy curriculum, LSTM 256, batch 256, T=5, the one-step
#       DNI default and two-step targets ({"lookahead": 2}), seeds 0-2, each process on one core
#       of GPU_CORES, all six sharing the GPU.
# The scaling runs go on alone once the copy runs end. Results land in $OUT (6 files).
# Locally, a small dry run of the same script:
#   OUT=/tmp/dry DEVICE=cpu BUDGET=20 STEPS=4 KS="1 2" HIDDEN=32 BATCH=16 bash benchmarks/device_run.sh
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
DEVICE=${DEVICE:-cuda}; BUDGET=${BUDGET:-270}; STEPS=${STEPS:-200}; KS=${KS:-"1 8 4 2"}
HIDDEN=${HIDDEN:-256}; BATCH=${BATCH:-256}; CONFIGS=${CONFIGS:-"exact overlap dp_same"}
SCALE_CORES=${SCALE_CORES:-0-9}; GPU_CORES=(${GPU_CORES:-10 11 12 13 14 15})
PY=$(command -v python3 || command -v python)

{ date -u; nproc; lscpu 2>/dev/null | grep -E "Model name|Thread|Core|Socket|NUMA node. CPU"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
  echo "part ${PART:-all}; all: scaling on cores $SCALE_CORES, copy runs on cores ${GPU_CORES[*]}"; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

pin() { if command -v taskset >/dev/null; then taskset -c "$@"; else shift; "$@"; fi; }

gpu_cost() {
  smoke=(); [ "$DEVICE" = cpu ] && smoke=(--smoke)
  timeout 240 $PY benchmarks/gpu_cost.py "${smoke[@]}" 2>&1 | tee "$OUT/gpu_cost.txt"
}
if [ "${PART:-all}" = gpu_cost ]; then
  gpu_cost
  exit 0
fi
if [ "${PART:-all}" = scaling_rest ]; then
  timeout 540 $PY benchmarks/scaling.py --ks 2 8 --steps "$STEPS" --out "$OUT" > "$OUT/scaling_log.txt" 2>&1
  tail -n 12 "$OUT/scaling_log.txt"
  exit 0
fi

[ "${PART:-all}" = all ] && gpu_cost

pin "$SCALE_CORES" timeout $((BUDGET + 60)) $PY benchmarks/scaling.py --ks $KS --steps "$STEPS" --out "$OUT" \
  --configs $CONFIGS > "$OUT/scaling_log.txt" 2>&1 &
scaling=$!

# Copy runs: name, then extra arguments. Default: the one-step default and two-step targets
# (lookahead 2), seeds 0-2, model lr 1e-3 for both (round 4's setting).
work=$(mktemp -d); i=0
for name in dni two_step; do
  extra=(); [ $name = two_step ] && extra=(--synth-kw '{"lookahead": 2}')
  for seed in 0 1 2; do
    pin "${GPU_CORES[$i]}" timeout $((BUDGET + 40)) $PY benchmarks/grid/copy_task.py --device "$DEVICE" --mode dni \
      "${extra[@]}" --truncation 5 --hidden "$HIDDEN" --batch "$BATCH" --seed $seed --budget-s "$BUDGET" \
      --log-every 30 --json "$work/copy_${name}_$seed.json" > "$work/copy_${name}_$seed.log" 2>&1 &
    i=$((i + 1))
  done
done
wait $(jobs -p | grep -v "^$scaling\$")

$PY - "$work" "$OUT" <<'EOF'
import glob, json, os, sys
work, out = sys.argv[1:]
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(work, "copy_*.json")))]
json.dump(runs, open(os.path.join(out, "copy_gpu.json"), "w"))
with open(os.path.join(out, "copy_log.txt"), "w") as f:
    for p in sorted(glob.glob(os.path.join(work, "copy_*.log"))):
        f.write(f"== {os.path.basename(p)}\n" + open(p).read())
for r in runs:
    print(r["mode"], r["synth_kw"], "seed", r["seed"], "N solved", r["max_len_solved"], "batches", r["steps"],
          "passed_at", r["passed_at"])
EOF
echo "copy runs done: $(date -u)"; wait $scaling; echo "scaling done: $(date -u)"
tail -n 14 "$OUT/scaling_log.txt"  # the scaling rows, to stdout
