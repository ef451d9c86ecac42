"""Run the benchmark grid: tasks x modes x truncations x seeds, equal wall-clock budget per run.

    python benchmarks/run_grid.py --out runs/grid --lanes 2
Each run writes one JSON (skipped if it exists, so the grid can be resumed). Then
``python benchmarks/report.py runs/grid`` writes docs/results.md and the plots.
"""
import argparse
import itertools
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GRID = {  # task: (script, truncations, budget seconds, extra options)
    "recall_d5": ("delayed_recall.py", [4], 45, ["--delay", "5"]),
    "recall_d8": ("delayed_recall.py", [4], 45, ["--delay", "8"]),
    "copy": ("copy_task.py", [3, 5], 60, []),
    "repeat_copy": ("repeat_copy.py", [3, 5], 60, []),
    "char_lm": ("char_lm.py", [3, 5], 90, []),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/grid")
    p.add_argument("--lanes", type=int, default=2, help="runs in parallel (one core each)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tasks", default=",".join(GRID))
    p.add_argument("--budget-scale", type=float, default=1.0)
    p.add_argument("--modes", default="tbptt,dni,bptt")
    p.add_argument("--truncations", default="", help="comma-separated T (default: each task's own)")
    p.add_argument("--max-steps", type=int, default=0, help="equal updates instead of equal wall-clock "
                                                            "(the budget is then unlimited)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed (held-out replications: 10)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    jobs = []
    for task in args.tasks.split(","):
        script, ts, budget, extra = GRID[task]
        if args.truncations:
            ts = [int(t) for t in args.truncations.split(",")]
        seeds = range(args.seed_offset, args.seed_offset + args.seeds)
        for t, mode, seed in itertools.product(ts, args.modes.split(","), seeds):
            out = os.path.join(args.out, f"{task}_{mode}_T{t}_s{seed}.json")
            if os.path.exists(out):
                continue
            cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "grid", script), "--mode", mode, "--truncation", str(t),
                   "--seed", str(seed), "--json", out, "--log-every", "1000", *extra]
            if args.max_steps:
                cmd += ["--budget-s", "1e9", "--max-steps", str(args.max_steps)]
            else:
                cmd += ["--budget-s", str(budget * args.budget_scale)]
            jobs.append((task, cmd))
    print(f"{len(jobs)} runs", flush=True)
    t0 = time.time()

    def run(job):
        task, cmd = job
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
        print(f"[{time.time() - t0:6.0f}s] {task}: {line}", flush=True)

    with ThreadPoolExecutor(args.lanes) as ex:
        list(ex.map(run, jobs))


if __name__ == "__main__":
    main()
