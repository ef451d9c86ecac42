"""Delayed recall: the target at step t is the input bit at step t - D. With D >= T, no target
inside a chunk depends on an input of the same chunk, so truncated BPTT cannot learn it.
Score: final_loss (mean BCE per target step over the last 50 batches; chance 0.693) and
solved_at (sequences until the 50-batch mean fell below 0.05; null if never).

    python benchmarks/grid/delayed_recall.py --mode dni --truncation 4 --delay 5 --seed 0 --budget-s 45
"""
import torch

from dni_dist import SeqModel
from dni_dist.loops import train_batch
from dni_dist.tasks import delayed_recall_batch

from _bench import Budget, finish, parser, setup


def main(argv=None):
    p = parser("Delayed recall")
    p.add_argument("--delay", type=int, default=5)
    p.add_argument("--chunks", type=int, default=20, help="chunks per sequence")
    p.set_defaults(truncation=4)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model = SeqModel(1, args.hidden, 1)
    opt, synth = setup(args, model)
    gen = torch.Generator().manual_seed(args.seed)
    length = args.chunks * args.truncation
    budget, losses, curve, solved_at = Budget(args), [], [], None
    while budget.running(len(losses)):
        x, y, m = (t.to(args.device) for t in delayed_recall_batch(args.batch, length, args.delay, gen))
        total, _ = train_batch(model, synth, opt, x, y, m, args.truncation, args.mode, clip=args.clip)
        losses.append(total / (length - args.delay))
        recent = sum(losses[-50:]) / len(losses[-50:])
        if solved_at is None and len(losses) >= 50 and recent < 0.05:
            solved_at = len(losses)
        curve.append([round(budget.elapsed(), 2), losses[-1]] if synth is None else  # gate, correlation (docs/tuning.md)
                     [round(budget.elapsed(), 2), losses[-1], round(synth.stats.gate, 4), round(synth.stats.correlation, 4)])
        budget.log(f"sequence {len(losses)} loss/step {recent:.3f}")
    return finish(args, {"steps": len(losses), "wall_s": budget.elapsed(), "delay": args.delay,
                         "synth_lr": args.synth_lr,
                         "final_loss": sum(losses[-50:]) / len(losses[-50:]), "solved_at": solved_at,
                         "curve": curve[::5]})


if __name__ == "__main__":
    main()
