"""How well do synthetic gradients match the true future gradient while DNI trains?

Delayed recall (D=5, T=4, 20 chunks, LSTM H=64, B=32), trained through the seed API; every
--every sequences, the alignment diagnostic on a fresh batch: cosine between the injected
synthetic gradient and the true full-BPTT gradient of all future losses at every boundary
(raw, and batch-centred as injected), and the norm ratio.

    python research/alignment.py --seeds 0 1 2 --sequences 1000 --out docs/data/alignment.json
"""
import argparse
import json
import statistics

import torch

from dni_dist import SeqModel, Synthesizer, alignment
from dni_dist.loops import train_batch
from dni_dist.tasks import delayed_recall_batch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sequences", type=int, default=1000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--out", default="docs/data/alignment.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = SeqModel(1, 64, 1)
        synth = Synthesizer.for_rnn(model.rnn)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for i in range(args.sequences):
            x, y, m = delayed_recall_batch(32, 80, 5, gen)
            total, _ = train_batch(model, synth, opt, x, y, m, 4, "dni")
            losses.append(total / 75)
            if (i + 1) % args.every == 0:
                x, y, m = delayed_recall_batch(32, 80, 5, torch.Generator().manual_seed(10_000 + i))
                a = alignment(model, synth, model.initial_state(32), x, y, m, 4)
                row = {"seed": seed, "sequences": i + 1, "loss": statistics.mean(losses[-args.every:]),
                       "cosine": statistics.mean(r["cosine"] for r in a),
                       "cosine_centred": statistics.mean(r["cosine_centred"] for r in a),
                       "norm_ratio": statistics.mean(r["norm_ratio"] for r in a)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
