"""What holds a two-cut memory up? (issue 10, goal 2) Train delayed recall (D=8, T=4) with
two-step targets up to a sequence where it is solved, then fork three copies of everything
(model, its Adam, the synthesizer and its Adam, the data stream) and continue each for a while:
as is; with plain truncated BPTT (no synthetic gradient); with the synthesizer frozen (lr 0).
Prints the loss per target step every 25 sequences of each branch, and writes them as JSON.

    python research/fork_solved.py --seed 0 --fork 1450 --after 300 --json runs/fork_solved.json
"""
import argparse
import copy
import json

import torch

from dni_dist import SeqModel, Synthesizer
from dni_dist.loops import train_batch
from dni_dist.tasks import delayed_recall_batch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synth-kw", default='{"lookahead": 2}')
    p.add_argument("--delay", type=int, default=8)
    p.add_argument("--fork", type=int, default=1450, help="sequences before the fork")
    p.add_argument("--after", type=int, default=300, help="sequences per branch after it")
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    T, n = 4, 20
    model = SeqModel(1, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    synth = Synthesizer.for_rnn(model.rnn, **json.loads(args.synth_kw))
    gen = torch.Generator().manual_seed(args.seed)

    def run(model, synth, opt, gen, k, label, mode="dni"):
        losses, means = [], []
        for i in range(k):
            x, y, m = delayed_recall_batch(32, n * T, args.delay, gen)
            total, _ = train_batch(model, synth, opt, x, y, m, T, mode)
            losses.append(total / (n * T - args.delay))
            if (i + 1) % 25 == 0:
                means.append(sum(losses[-25:]) / 25)
                print(f"{label:>12} {i + 1:5d}  loss/step {means[-1]:.3f}  gate {synth.stats.gate:.2f}", flush=True)
        return means

    out = {"seed": args.seed, "synth_kw": args.synth_kw, "fork": args.fork,
           "trunk": run(model, synth, opt, gen, args.fork, "trunk")}
    for label in ("as-is", "tbptt", "frozen-synth"):
        m, s, o = copy.deepcopy((model, synth, opt))
        o2 = torch.optim.Adam(m.parameters(), lr=1e-3)
        o2.load_state_dict(o.state_dict())
        g = torch.Generator()
        g.set_state(gen.get_state())
        if label == "frozen-synth":
            for group in s.optimizer.param_groups:
                group["lr"] = 0.0
        out[label] = run(m, s, o2, g, args.after, label, mode="tbptt" if label == "tbptt" else "dni")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
