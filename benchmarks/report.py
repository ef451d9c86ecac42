"""Turn grid folders of JSON results (run_grid.py) into tables (docs/results_grid.md) and PNG
plots under docs/. docs/results.md is written by hand and links here.

    python benchmarks/report.py runs/grid --machine "2-core CPU, torch 2.13.0"
    python benchmarks/report.py runs/wins_equal_updates --out /tmp/report   # anywhere else
    python benchmarks/report.py --replot-csv docs/data/results_runs.csv --out docs/data --note "round 1, before the gate"
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


def level_nr(level: int):
    """Repeat-copy levels 1, 2, 3, ... -> (N, R) (the same map as benchmarks/grid/repeat_copy.py)."""
    return (level + 2) // 2, (level + 1) // 2


def solved_curve(task, curve):
    """(seconds, score passed so far) from a curriculum run's curve. Newer runs store the score as
    the fourth field; older ones stored only the level being attempted (passed = level - 1)."""
    out = []
    for p in curve:
        if len(p) > 3:
            score = p[3]
        else:
            passed = p[1] - 1
            score = passed if task == "copy" else (0 if passed < 1 else level_nr(passed)[0] * level_nr(passed)[1])
        out.append((p[0], score))
    return out


def save(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


STYLE = {"tbptt": ("tab:red", "--", "v"), "dni": ("tab:blue", "-", "o"), "bptt": ("tab:gray", ":", "s")}


def plots(runs, out_dir, suffix=""):
    """Curves of the curriculum and recall tasks, char-LM's validation bits/char per seed, and the
    best curriculum length vs T. Each mode has its own colour, line style and marker, and modes
    are offset a little along x where their points would coincide."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    for task in SCORES:
        keys = [k for k in runs if k[0] == task]
        if not keys or task == "char_lm":
            continue
        ts = sorted({k[2] for k in keys})
        fig, axes = plt.subplots(1, len(ts), figsize=(5 * len(ts), 3.6), squeeze=False)
        for ax, t in zip(axes[0], ts):
            for mode in MODES:
                color, ls, _ = STYLE[mode]
                for i, r in enumerate(runs.get((task, mode, t), [])):
                    c = r.get("curve") or []
                    if not c:
                        continue
                    pts = solved_curve(task, c) if task in ("copy", "repeat_copy") else [(p[0], p[1]) for p in c]
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, ls=ls, alpha=0.8, lw=1.2,
                            drawstyle="steps-post" if task in ("copy", "repeat_copy") else "default",
                            label=mode if i == 0 else None)
            ax.set_title(f"{task}, T={t}")
            ax.set_xlabel("wall-clock seconds")
            ax.set_ylabel({"copy": "longest N passed", "repeat_copy": "longest N x R passed"}
                          .get(task, "loss per step"))
            if task.startswith("recall"):
                ax.set_yscale("log")
            ax.legend()
        made.append(save(fig, os.path.join(out_dir, f"curves_{task}{suffix}.png")))
    # char-LM: the validation bits/char each seed ended at (what the tables compare)
    ts = sorted({k[2] for k in runs if k[0] == "char_lm"})
    if ts:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for j, mode in enumerate(MODES):
            color, _, marker = STYLE[mode]
            for t in ts:
                vals = [r["valid_bpc"] for r in runs.get(("char_lm", mode, t), [])]
                x = t + (j - 1) * 0.12
                ax.plot([x] * len(vals), vals, marker, color=color, alpha=0.8,
                        label=mode if t == ts[0] and vals else None)
                if vals:
                    ax.hlines(statistics.mean(vals), x - 0.08, x + 0.08, color=color)
        ax.set_xticks(ts)
        ax.set_xlim(min(ts) - 0.5, max(ts) + 0.5)
        ax.set_xlabel("truncation T")
        ax.set_ylabel("validation bits/char (each seed; bar = mean)")
        ax.set_title("char_lm")
        ax.legend()
        made.append(save(fig, os.path.join(out_dir, f"valid_bpc_char_lm{suffix}.png")))
    made += max_len_plot(runs, out_dir, suffix)
    return made


def max_len_plot(runs, out_dir, suffix="", note=""):
    """The best curriculum score (mean of seeds) against T, one panel per curriculum task, ticks at
    the T that ran, y from zero; ``note`` goes in each title (e.g. the round the runs are from)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    if any(k[0] in ("copy", "repeat_copy") for k in runs):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for ax, task in zip(axes, ["copy", "repeat_copy"]):
            all_ts = set()
            for j, mode in enumerate(MODES):
                color, ls, marker = STYLE[mode]
                ts = sorted({k[2] for k in runs if k[0] == task and k[1] == mode})
                if not ts:
                    continue
                all_ts |= set(ts)
                means = [statistics.mean(r["max_len_solved"] for r in runs[(task, mode, t)]) for t in ts]
                ax.plot([t + (j - 1) * 0.06 for t in ts], means, marker=marker, ls=ls, color=color, label=mode)
            if all_ts:
                ax.set_xticks(sorted(all_ts))
                ax.set_xlim(min(all_ts) - 0.5, max(all_ts) + 0.5)
            ax.set_ylim(bottom=0)
            ax.set_title(f"{task}{', ' + note if note else ''}", fontsize=10)
            ax.set_xlabel("truncation T")
            ax.set_ylabel("longest " + ("N" if task == "copy" else "N x R") + " passed (mean of seeds)")
            ax.legend()
        made.append(save(fig, os.path.join(out_dir, f"max_len_vs_T{suffix}.png")))
    return made


def label_png(path, note, dpi=90):
    """Put ``note`` (may hold newlines) in a banner above an existing plot, in place: for plots
    whose data is not in the repository, so they cannot be redrawn. Run it once per plot;
    ``dpi``: the one the plot was saved with (this script's 90), so the text matches its size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img = plt.imread(path)
    h, w = img.shape[:2]
    band = int((12.6 * (note.count("\n") + 1) + 7) * dpi / 72)  # pixels: 9-point lines, 1.4 apart
    fig = plt.figure(figsize=(w / dpi, (h + band) / dpi), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, h / (h + band)])
    ax.imshow(img)
    ax.axis("off")
    fig.text(0.5, 1 - 3 * dpi / 72 / (h + band), note, ha="center", va="top", fontsize=9, color="darkred")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def load_csv(path):
    """``{folder: runs}`` from a results_runs.csv this script wrote (the scores, not the curves)."""
    import csv
    out = defaultdict(lambda: defaultdict(list))
    for row in csv.DictReader(open(path)):
        score = float(row["score"])
        out[row["folder"]][(row["task"], row["mode"], int(row["truncation"]))].append(
            {row["score_name"]: int(score) if score.is_integer() else score, "seed": int(row["seed"]),
             "steps": int(row["steps"]), "wall_s": float(row["wall_s"]), "mode": row["mode"],
             "truncation": int(row["truncation"])})
    return out


def replot_csv(path, out_dir, note=""):
    """Redraw the plots whose data a results_runs.csv holds (max_len_vs_T*.png: the curves need
    the run folders): the first folder's without a suffix, the others' with the folder's name."""
    made = []
    for i, (folder, runs) in enumerate(load_csv(path).items()):
        made += max_len_plot(runs, out_dir, "" if i == 0 else f"_{os.path.basename(folder.rstrip('/'))}", note)
    return made


def main():
    p = argparse.ArgumentParser()
    p.add_argument("folders", nargs="*", help="grid folders, each written by run_grid.py (e.g. runs/grid)")
    p.add_argument("--replot-csv", default="", help="only redraw max_len_vs_T*.png from this results_runs.csv "
                   "into --out (e.g. docs/data/results_runs.csv --out docs/data)")
    p.add_argument("--note", default="", help="with --replot-csv: added to each plot's title; with --label: the "
                   "banner's text (\\n for a new line)")
    p.add_argument("--label", nargs="+", default=[], help="only put --note in a banner above these existing PNGs "
                   "(plots whose data is not in the repository)")
    p.add_argument("--dpi", type=int, default=90, help="with --label: the dpi the plots were saved with")
    p.add_argument("--budget-scales", default="", help="comma list, one per folder (as given to run_grid.py)")
    p.add_argument("--machine", default="this repository's 2-core CPU machine (no GPU), torch 2.13.0 CPU")
    p.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = p.parse_args()
    if args.label:
        print("\n".join(label_png(path, args.note.replace("\\n", "\n"), args.dpi) for path in args.label))
        return
    if args.replot_csv:
        print("\n".join(replot_csv(args.replot_csv, args.out, args.note)))
        return
    if not args.folders:
        p.error("give grid folders (or --replot-csv)")
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
    text = f"""# Grid results: synthetic gradients vs truncation (tables and plots)

Generated by `python benchmarks/report.py {" ".join(args.folders)}{" --budget-scales " + args.budget_scales if args.budget_scales else ""}`
on {args.machine}. Scores: delayed recall, the mean loss per target step over the last 50 batches
(chance 0.693); copy and repeat-copy, the longest curriculum level passed (mean error < 0.15 bits
per recall step over 20 batches); char-LM, validation bits per character (first 50k characters).
Full BPTT is the ceiling (for char-LM: BPTT over the 8-chunk update window).
What the numbers mean, and the later rounds: [results.md](results.md).

{"".join(sections)}"""
    with open(os.path.join(args.out, "results_grid.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
