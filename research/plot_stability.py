"""Before/after curves of the stability benchmark: loss per chunk (10-batch windows, log scale).

    python research/plot_stability.py runs/stability_nogate runs/stability --hidden 256 --out docs/data/stability.png
"""
import argparse
import glob
import json
import os
import sys


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from stability import score  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--out", default="docs/data/stability.png")
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, folder, title in ((axes[0], args.before, "before: no gate"), (axes[1], args.after, "after: gated (default)")):
        for path in sorted(glob.glob(os.path.join(folder, f"h{args.hidden}_s*.json"))):
            w = score(json.load(open(path))["losses"])["windows"]
            ax.plot([10 * (i + 1) for i in range(len(w))], w, label=os.path.basename(path)[:-5].split("_")[1])
        ax.axhline(0.1, color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_title(f"{title}, H={args.hidden}", fontsize=10)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("loss per chunk (10-batch mean)")
    fig.suptitle("Delayed recall D=5 inside chunks of T=16 (TBPTT solves it), 400 batches", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
