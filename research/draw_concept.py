"""Draw docs/data/concept.png: chunks, boundaries, synthesizers, forward states and delayed deltas,
for one process (top) and for K=2 pipelined workers (bottom).

    python research/draw_concept.py
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from dni_dist.engine.schedule import Schedule  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "data", "concept.png")


def arrow(ax, a, b, color, style="-", rad=0.0, lw=1.6):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color=color, lw=lw,
                                 linestyle=style, connectionstyle=f"arc3,rad={rad}"))


def box(ax, x, y, w, h, text, color, fs=9):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="black", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs)


def one_process(ax):
    ax.set_title("One process: truncated BPTT over chunks of T steps, a synthesizer at every cut", fontsize=10)
    n = 4
    for c in range(n):
        x = c * 3.0
        box(ax, x, 1.0, 2.0, 1.0, f"chunk {c}\nT steps, loss $L_{c}$", "#dbe9f6")
        if c < n - 1:
            arrow(ax, (x + 2.0, 1.5), (x + 3.0, 1.5), "black")
            ax.text(x + 2.5, 1.62, f"$h_{c + 1}$", ha="center", fontsize=9)
            box(ax, x + 2.05, 2.55, 0.9, 0.55, "S", "#fde0c5")
            arrow(ax, (x + 2.5, 1.62), (x + 2.5, 2.55), "tab:orange", lw=1.0)
            arrow(ax, (x + 2.4, 2.55), (x + 1.7, 2.0), "tab:orange", rad=0.2)
            ax.text(x + 1.55, 2.5, "$g=S(h)$", fontsize=8, color="tab:orange")
            arrow(ax, (x + 3.3, 1.0), (x + 2.65, 2.55), "tab:green", style="--", rad=-0.5)
            ax.text(x + 3.25, 0.55, r"target $\delta_{%d}$" % (c + 1), fontsize=8, color="tab:green")
    ax.text(-0.1, 0.1, "black: state forward (graph cut)   orange: synthetic gradient injected at the chunk's end\n"
            "green dashed: the gradient that reached the next chunk's start, "
            r"$\partial L_{c+1}/\partial h + \gamma J^\top g$, trains S", fontsize=8)
    ax.set_xlim(-0.3, 11.5)
    ax.set_ylim(0, 3.4)
    ax.axis("off")


def workers(ax):
    s = Schedule(chunks=4, workers=2, batches=3)
    ax.set_title("K=2 workers, contiguous blocks: worker k runs chunks 2k, 2k+1 of batch b at ticks 2(b+k), 2(b+k)+1",
                 fontsize=10)
    for w in range(2):
        ax.text(-0.6, 1.6 - w * 1.3 + 0.35, f"worker {w}", ha="right", va="center", fontsize=9)
        for t in range(s.ticks):
            a = s.action(w, t)
            y = 1.6 - w * 1.3
            if a is None:
                box(ax, t * 1.5, y, 1.2, 0.7, "idle", "#eeeeee", 8)
                continue
            box(ax, t * 1.5, y, 1.2, 0.7, f"b{a.batch} c{a.chunk}", ["#dbe9f6", "#e3f2d9", "#f9e0ea"][a.batch % 3], 8)
            if s.sends_state(a):
                arrow(ax, (t * 1.5 + 1.2, y + 0.15), ((t + 1) * 1.5, y - 1.3 + 0.55), "black")
            if s.needs_delta(a):  # the cut's target is computed where it arrives, not sent back
                ax.text(t * 1.5 + 0.06, y + 0.06, "δ→S", color="tab:green", fontsize=7, ha="left", va="bottom")
    ax.text(-0.1, -0.75, "black: final state sent on at once, before the sender's backward\n"
            "green δ→S: the gradient reaching a chunk's start state trains the (replicated) synthesizer right there; nothing travels back\n"
            "every tick ends with one all-reduce of the gradients (exact), or overlaps it with the next tick (--sync overlap)",
            fontsize=8)
    ax.set_xlim(-1.8, s.ticks * 1.5)
    ax.set_ylim(-0.95, 2.5)
    ax.axis("off")


def main():
    fig, (a, b) = plt.subplots(2, 1, figsize=(11, 6.4))
    one_process(a)
    workers(b)
    fig.tight_layout()
    fig.savefig(OUT, dpi=100)
    print(OUT)


if __name__ == "__main__":
    main()
