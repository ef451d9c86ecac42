"""Repeat-copy (Graves et al. 2014; Jaderberg et al. 2017, section 3.2): N vectors, a delimiter
carrying R, then the pattern R times. Curriculum over levels: the smaller of N and R grows
(N first) when the mean error falls below 0.15 bits per step. Score: max_len_solved = N*R.

    python benchmarks/grid/repeat_copy.py --mode dni --truncation 3 --seed 0 --budget-s 60 --json runs/rc.json
"""
import torch

from dni_dist import SeqModel
from dni_dist.tasks import repeat_copy_batch

from _bench import Budget, curriculum, finish, parser, setup


def level_nr(level: int):
    """Levels 1, 2, 3, ... -> (N, R) = (1,1), (2,1), (2,2), (3,2), (3,3), ..."""
    return (level + 2) // 2, (level + 1) // 2


def main(argv=None):
    p = parser("Repeat-copy task with curriculum")
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--max-level", type=int, default=30)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model = SeqModel(10, args.hidden, 8)
    opt, synth = setup(args, model)

    def make(level, gen):
        n, r = level_nr(level)
        return repeat_copy_batch(args.batch, n, r, gen)

    def score(level):
        n, r = level_nr(level)
        return n * r

    out = curriculum(args, make, "level", args.max_level, score, model, opt, synth, Budget(args))
    return finish(args, out)


if __name__ == "__main__":
    main()
