#!/usr/bin/env python3
"""Score the engine's delayed-recall runs (docs/results.md, rounds 8-9) from their --metrics-json:

    python research/score_engine_recall.py runs/engine_two_step/*.json

Loss per target step = the per-tick chunk loss x chunks / target steps (a sequence of chunks x T
steps has chunks x T - D targets: D=8, T=4, 20 chunks gives 20/72), averaged per batch, then a
rolling 50-batch mean. reached = the batch at which it first fell below 0.05; final = the last 50
batches; worst = the highest rolling mean after reaching."""
import json
import sys

for p in sys.argv[1:]:
    d = json.load(open(p))
    L, nb, cfg = d["losses"], d["batches"], d["config"]
    scale = cfg["chunks"] / (cfg["chunks"] * cfg["truncation"] - cfg["delay"])
    k = len(L) // nb
    per = [sum(L[i * k:(i + 1) * k]) / k * scale for i in range(nb)]
    roll = [sum(per[i - 50:i]) / 50 for i in range(50, nb + 1)]  # roll[j]: batches j..j+49, ends at j+50
    reached = next((j + 50 for j, v in enumerate(roll) if v < 0.05), None)
    worst = max(roll[reached - 50:]) if reached else None
    print(p.split('/')[-1], "reached", reached, "final %.3f" % roll[-1],
          "worst after", None if worst is None else "%.3f" % worst)
