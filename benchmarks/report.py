"""Turn the grid's JSON results into docs/results.md and PNG plots under docs/.

    python benchmarks/report.py runs/grid --machine "2-core CPU, torch 2.13.0"
"""
import argparse
import glob
import json
import os
import statistics
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORES = {"recall_d5": ("final_loss", "lower"), "recall_d8": ("final_loss", "lower"),
          "copy": ("max_len_solved", "higher"), "repeat_copy": ("max_len_solved", "higher"),
          "char_lm": ("valid_bpc", "lower")}
MODES = ["tbptt", "dni", "bptt"]


def load(folder):
    runs = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        name = os.path.basename(path)[:-5]
        task = name.rsplit("_", 3)[0]
        r = json.load(open(path))
        runs[(task, r["mode"], r["truncation"])].append(r)
    return runs


def fmt(vals, kind):
    if not vals:
        return "-"
    m = statistics.mean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    each = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in vals)
    return f"{m:.3g} ± {sd:.2g} ({each})"


def table(runs):
    lines = []
    for task, (score, better) in SCORES.items():
        ts = sorted({t for (k, _, t) in runs if k == task})
        if not ts:
            continue
        lines += [f"### {task}: `{score}` ({better} is better)", "",
                  "| T | " + " | ".join(MODES) + " | steps (tbptt / dni / bptt, mean) |",
                  "|---|" + "---|" * (len(MODES) + 1)]
        for t in ts:
            cells, steps = [], []
            for mode in MODES:
                rs = runs.get((task, mode, t), [])
                cells.append(fmt([r[score] for r in rs], score))
                steps.append(f"{statistics.mean(r['steps'] for r in rs):.0f}" if rs else "-")
            lines.append(f"| {t} | " + " | ".join(cells) + " | " + " / ".join(steps) + " |")
        lines.append("")
    return "\n".join(lines)


def plots(runs, out_dir, suffix=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"tbptt": "tab:red", "dni": "tab:blue", "bptt": "tab:gray"}
    made = []
    for task in SCORES:
        keys = [k for k in runs if k[0] == task]
        if not keys:
            continue
        ts = sorted({k[2] for k in keys})
        fig, axes = plt.subplots(1, len(ts), figsize=(5 * len(ts), 3.6), squeeze=False)
        for ax, t in zip(axes[0], ts):
            for mode in MODES:
                for i, r in enumerate(runs.get((task, mode, t), [])):
                    c = r.get("curve") or []
                    if not c:
                        continue
                    xs = [p[0] for p in c]
                    ys = [p[1] if task.startswith(("recall", "char")) else p[1] for p in c]
                    ax.plot(xs, ys, color=colors[mode], alpha=0.7, lw=1, label=mode if i == 0 else None)
            ax.set_title(f"{task}, T={t}")
            ax.set_xlabel("wall-clock seconds")
            ax.set_ylabel({"copy": "curriculum N", "repeat_copy": "curriculum level",
                           "char_lm": "train bits/char", }.get(task, "loss per step"))
            if task.startswith("recall"):
                ax.set_yscale("log")
            ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, f"curves_{task}{suffix}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path)
    # score vs T for the curriculum tasks
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, task in zip(axes, ["copy", "repeat_copy"]):
        for mode in MODES:
            ts = sorted({k[2] for k in runs if k[0] == task and k[1] == mode})
            if not ts:
                continue
            means = [statistics.mean(r["max_len_solved"] for r in runs[(task, mode, t)]) for t in ts]
            ax.plot(ts, means, "o-", color=colors[mode], label=mode)
        ax.set_title(task)
        ax.set_xlabel("truncation T")
        ax.set_ylabel("max length solved (mean of seeds)")
        ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, f"max_len_vs_T{suffix}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    made.append(path)
    return made


def main():
    p = argparse.ArgumentParser()
    p.add_argument("folders", nargs="+", help="grid folders, each written by run_grid.py")
    p.add_argument("--budget-scales", default="", help="comma list, one per folder (as given to run_grid.py)")
    p.add_argument("--machine", default="this repository's 2-core CPU machine (no GPU), torch 2.13.0 CPU")
    p.add_argument("--notes", default=os.path.join(ROOT, "benchmarks", "results_notes.md"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = p.parse_args()
    scales = args.budget_scales.split(",") if args.budget_scales else ["1"] * len(args.folders)
    os.makedirs(args.out, exist_ok=True)
    sections = []
    for i, (folder, scale) in enumerate(zip(args.folders, scales)):
        runs = load(folder)
        made = plots(runs, args.out, "" if i == 0 else f"_{os.path.basename(folder.rstrip('/'))}")
        extra = "" if scale == "1" else f" --budget-scale {scale}"
        sections.append(f"""## Runs in `{folder}`

Made by `python benchmarks/run_grid.py --out {folder} --lanes 2{extra}` (budgets in
`benchmarks/run_grid.py` times {scale}; each run one process, one thread, two runs at a time).
Cells: mean ± standard deviation over seeds, then each seed's value in parentheses.

{table(runs)}
Plots: {", ".join(f"[{os.path.basename(m)}]({os.path.basename(m)})" for m in made)}
""")
    with open(os.path.join(args.out, "results_runs.csv"), "w") as f:  # every run's score, for re-analysis
        f.write("folder,task,mode,truncation,seed,score_name,score,steps,wall_s\n")
        for folder in args.folders:
            for (task, mode, t), rs in sorted(load(folder).items()):
                for r in rs:
                    score = SCORES[task][0]
                    f.write(f"{folder},{task},{mode},{t},{r['seed']},{score},{r[score]},{r['steps']},{r['wall_s']:.1f}\n")
    notes = open(args.notes).read() if os.path.exists(args.notes) else ""
    text = f"""# Results: synthetic gradients vs truncation

Generated by `python benchmarks/report.py {" ".join(args.folders)}{" --budget-scales " + args.budget_scales if args.budget_scales else ""}`
on {args.machine}. Scores: delayed recall, the mean loss per target step over the last 50 batches
(chance 0.693); copy and repeat-copy, the longest curriculum level passed (mean error < 0.15 bits
per recall step over 20 batches); char-LM, validation bits per character (first 50k characters).
Full BPTT is the ceiling (for char-LM: BPTT over the 8-chunk update window).

{notes}
{"".join(sections)}"""
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
