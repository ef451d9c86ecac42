"""Which parts of the synthesizer's recipe matter? Delayed recall D=5, T=4 (TBPTT cannot learn
it; ``--delay 8``: two cuts back), a fixed number of sequences per run, 3 seeds per variant; each variant changes one
default of Synthesizer. Writes a JSON per run and a markdown table.

    python research/ablations.py --out runs/ablations --sequences 1200 --lanes 1
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {  # name: Synthesizer options (everything else default)
    "defaults": {},
    "no gate (injection not scaled by its measured fit)": {"gate": False},
    "gate tolerance 1 (least-squares shrinkage)": {"gate_tolerance": 1.0},
    "gate tolerance 4": {"gate_tolerance": 4.0},
    "one backward: factor 0.5, discount 1 (the same targets as the defaults)": {"factor": 0.5, "discount": 1.0},
    "not normalised, lr 1e-4 (the issue's lead)": {"normalize": False, "lr": 1e-4},
    "normalised, lr 1e-4": {"lr": 1e-4},
    "normalised, lr 1e-2": {"lr": 1e-2},
    "no centring": {"centre": False},
    "discount 1 (paper's bootstrap)": {"discount": 1.0},
    "discount 0": {"discount": 0.0},
    "injection scale 3": {"factor": 3.0},
    "discount 0.8": {"discount": 0.8},
    "one hidden layer": {"hidden_layers": 1},
    "discount 1, injection scale 0.3 (issue 10's 'gamma = 1 with a small injection scale')":
        {"discount": 1.0, "factor": 0.3},
    "two-step targets (lookahead 2)": {"lookahead": 2},
    "two-step targets, weight 0.5 (BP(lambda)-like mix)": {"lookahead": 2, "lookahead_weight": 0.5},
    "two-step targets, gate tolerance 1": {"lookahead": 2, "gate_tolerance": 1.0},
    "two-step targets, slower target scale (decay 0.999)": {"lookahead": 2, "scale_decay": 0.999},
    "two-step targets, discount 1": {"lookahead": 2, "discount": 1.0},
    "two-step targets, synthesizer lr 1e-3": {"lookahead": 2, "lr": 1e-3},
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--sequences", type=int, default=1200)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed-offset", type=int, default=0, help="first seed (held-out replications: 10)")
    p.add_argument("--lanes", type=int, default=1)
    p.add_argument("--delay", type=int, default=5, help="D: 5 is one cut back at T=4, 8 is two cuts")
    p.add_argument("--only", default="", help="comma-separated variant indices to run (default: all)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    jobs = []
    only = {int(i) for i in args.only.split(",") if i}
    for i, (name, kw) in enumerate(VARIANTS.items()):
        if only and i not in only:
            continue
        for seed in range(args.seed_offset, args.seed_offset + args.seeds):
            out = os.path.join(args.out, f"v{i}_s{seed}.json")
            if not os.path.exists(out):
                jobs.append([sys.executable, os.path.join(ROOT, "benchmarks", "grid", "delayed_recall.py"), "--mode", "dni",
                             "--truncation", "4", "--delay", str(args.delay), "--seed", str(seed), "--budget-s", "100000",
                             "--max-steps", str(args.sequences), "--synth-kw", json.dumps(kw), "--json", out,
                             "--log-every", "100000"])
    with ThreadPoolExecutor(args.lanes) as ex:
        list(ex.map(lambda c: subprocess.run(c, capture_output=True), jobs))
    lines = [f"| variant | final loss per step, {args.seeds} seeds (chance 0.693) | seeds solved (< 0.05) | "
             "sequences to solve |",
             "|---|---|---|---|"]
    for i, name in enumerate(VARIANTS):
        if only and i not in only:
            continue
        rs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(args.out, f"v{i}_s*.json")))]
        if not rs:
            continue
        fl = [r["final_loss"] for r in rs]
        solved = [r["solved_at"] for r in rs if r["solved_at"]]
        lines.append(f"| {name} `{json.dumps(VARIANTS[name])}` | {statistics.mean(fl):.3f} "
                     f"({', '.join(f'{v:.3f}' for v in fl)}) | {len(solved)}/{len(rs)} | "
                     f"{', '.join(map(str, solved)) or '-'} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
