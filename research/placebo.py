"""A placebo for the synthetic gradient: DNI's injection with its direction scrambled.

Runs ``benchmarks/grid/char_lm.py`` (any of its arguments) with ``Synthesizer.synthetic_gradient``
wrapped so that each injected gradient goes to another stream of the batch (a fixed-seed
permutation of the batch rows, drawn from a private generator: the model's and data's randomness
are untouched). The synthesizer, its gate and its targets run as in DNI, so the injection has
DNI's size and timing but no correlation with the gradient it stands for. What it measures: how
far a perturbation of that size moves a run's final score by itself (issue 10, goal 1's noise
floor). ``--mode dni`` is required.

    python research/placebo.py --corpus ptb --seed 2 --mode dni --truncation 5 --max-steps 2800 \
        --budget-s 100000 --eval-every 100 --json runs/placebo/ptb_s2.json
"""
import os
import sys

import torch

from dni_dist import targets as tg
from dni_dist.synthesizer import Synthesizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "grid"))
import char_lm  # noqa: E402


def scrambled(real):
    gen = torch.Generator().manual_seed(12345)

    def synthetic_gradient(self, state):
        g = tg.as_tuple(real(self, state))
        batch = g[0].shape[0] if g[0].dim() == 2 else g[0].shape[1]
        perm = torch.randperm(batch, generator=gen)
        while batch > 1 and bool((perm == torch.arange(batch)).any()):  # every row moves
            perm = torch.randperm(batch, generator=gen)
        out = [t[perm] if t.dim() == 2 else t[:, perm] for t in g]
        return tg.like(out, state)
    return synthetic_gradient


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--mode" not in argv or argv[argv.index("--mode") + 1] != "dni":
        raise SystemExit("placebo.py: pass --mode dni (the placebo replaces DNI's injection)")
    Synthesizer.synthetic_gradient = scrambled(Synthesizer.synthetic_gradient)
    return char_lm.main(argv)


if __name__ == "__main__":
    main()
