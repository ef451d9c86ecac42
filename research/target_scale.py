"""Why targets are normalised: the synthesizer's regression error relative to its targets' energy
(error / mean square of targets; 1 = no better than predicting zero), with and without
normalisation. Delayed recall D=5, T=4, LSTM H=64, B=32, through the seed API.

    python research/target_scale.py --seed 2 --sequences 300
"""
import argparse
import statistics

import torch

from dni_dist import SeqModel, Synthesizer
from dni_dist.loops import train_batch
from dni_dist.tasks import delayed_recall_batch


def run(seed, sequences, **kw):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SeqModel(1, 64, 1)
    synth = Synthesizer.for_rnn(model.rnn, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ratios, rms = [], []
    for _ in range(sequences):
        train_batch(model, synth, opt, *delayed_recall_batch(32, 80, 5, gen), 4, "dni")
        ratios.append(synth.stats.last_loss / synth.stats.last_target_energy)
        rms.append(synth.stats.last_target_energy ** 0.5)
    return ratios, rms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--sequences", type=int, default=300)
    args = p.parse_args()
    torch.set_num_threads(1)
    for name, kw in [("not normalised, Adam 1e-4", {"normalize": False, "lr": 1e-4}), ("defaults", {})]:
        r, rms = run(args.seed, args.sequences, **kw)
        print(f"{name:<28} error/energy: median {statistics.median(r):.3g}, max {max(r):.3g}; "
              f"target RMS per unit: median {statistics.median(rms):.2g} (over {len(r)} sequences)")


if __name__ == "__main__":
    main()
