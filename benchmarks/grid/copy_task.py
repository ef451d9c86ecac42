"""Copy task (Graves et al. 2014) with the curriculum of Jaderberg et al. 2017, section 3.2:
N random 8-bit vectors, a delimiter, then recall; N grows when the mean error over recent
batches falls below 0.15 bits per recall step. Score: max_len_solved (the largest N passed).

    python benchmarks/grid/copy_task.py --mode dni --truncation 3 --seed 0 --budget-s 60 --json runs/copy.json
"""
import torch

from dni_dist import SeqModel
from dni_dist.tasks import copy_batch

from _bench import Budget, curriculum, finish, parser, setup


def main(argv=None):
    p = parser("Copy task with curriculum")
    p.add_argument("--window", type=int, default=20, help="batches averaged for the 0.15-bit criterion")
    p.add_argument("--max-len", type=int, default=60)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model = SeqModel(9, args.hidden, 8)
    opt, synth = setup(args, model)
    out = curriculum(args, lambda n, g: copy_batch(args.batch, n, g), "N", args.max_len, lambda n: n,
                     model, opt, synth, Budget(args))
    return finish(args, out)


if __name__ == "__main__":
    main()
