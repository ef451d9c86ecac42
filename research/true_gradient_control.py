"""Credit across two cuts: a bootstrap problem or a capacity problem? (issue 10, goal 2)

Delayed recall with D=8 at T=4: a target's input lies up to two cuts back, and the default
synthesizer (bootstrapped targets) stays near chance. This control keeps everything of the
default recipe -- the same linear synthesizer, normalisation, centring, gate, one regression step
per boundary -- but regresses it on the TRUE future gradient dL_{>=c+1}/dh_c at every cut,
computed each batch by full BPTT through the current model (chained chunk by chunk, before the
batch's updates). If the control learns the task, the synthesizer can represent the gradient and
the bootstrap is what fails; if it does not, the linear synthesizer (or the injection) is the limit.

    python research/true_gradient_control.py --delay 8 --seed 0 --sequences 2500 --json runs/control_d8_s0.json
    python research/true_gradient_control.py --no-gate ...   # inject at full scale
The bootstrapped baseline is `python benchmarks/grid/delayed_recall.py --delay 8 --max-steps 2500 ...`.
"""
import argparse
import json
import time

import torch

from dni_dist import SeqModel, Synthesizer
from dni_dist import targets as tg
from dni_dist.tasks import delayed_recall_batch


def true_future_grads(model, x, y, m, T):
    """Start states of every chunk (detached) and dL_{>=c}/d(start of chunk c), by full BPTT."""
    n = x.shape[1] // T
    state = model.initial_state(x.shape[0])
    starts, ends, losses = [], [], []
    for c in range(n):
        s = tg.detach_requires_grad(state)
        sl = slice(c * T, (c + 1) * T)
        loss, end = model.chunk_loss(x[:, sl], y[:, sl], m[:, sl], s)
        starts.append(s)
        ends.append(end)
        losses.append(loss)
        state = end
    grads, g_next = [None] * n, None
    for c in reversed(range(n)):
        outs, cot = [losses[c]], [torch.ones(())]
        if g_next is not None:
            outs += list(tg.as_tuple(ends[c]))
            cot += list(tg.as_tuple(g_next))
        got = torch.autograd.grad(outs, list(tg.as_tuple(starts[c])), cot, allow_unused=True)
        g = tg.like([torch.zeros_like(s) if gg is None else gg for gg, s in zip(got, tg.as_tuple(starts[c]))],
                    starts[c])
        grads[c] = g
        g_next = g
    return [tg.detach(s) for s in starts], grads


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delay", type=int, default=8)
    p.add_argument("--truncation", type=int, default=4)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sequences", type=int, default=2500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-gate", action="store_true",
                   help="inject the prediction at full scale (the gate measures skill against bootstrapped "
                        "targets' noise; on true targets it can shut the control off)")
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    T, n = args.truncation, args.chunks
    model = SeqModel(1, args.hidden, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    synth = Synthesizer.for_rnn(model.rnn, gate=not args.no_gate)
    gen = torch.Generator().manual_seed(args.seed)
    length = n * T
    losses, solved_at, t0 = [], None, time.perf_counter()
    while len(losses) < args.sequences:
        x, y, m = delayed_recall_batch(args.batch, length, args.delay, gen)
        starts, grads = true_future_grads(model, x, y, m, T)
        state, total = model.initial_state(args.batch), 0.0
        for c in range(n):
            sl = slice(c * T, (c + 1) * T)
            loss, end = model.chunk_loss(x[:, sl], y[:, sl], m[:, sl], state)
            full = loss if c == n - 1 else loss + tg.surrogate(end, synth.synthetic_gradient(end))
            opt.zero_grad(set_to_none=True)
            full.backward()
            opt.step()
            total += float(loss.detach())
            state = tg.detach(end)
            if c < n - 1:  # one regression step per boundary, as the defaults take
                synth.optimizer.zero_grad(set_to_none=True)
                synth.finish_update(synth.accumulate([starts[c + 1]], [grads[c + 1]]))
        losses.append(total / (length - args.delay))
        recent = sum(losses[-50:]) / len(losses[-50:])
        if solved_at is None and len(losses) >= 50 and recent < 0.05:
            solved_at = len(losses)
        if len(losses) % 250 == 0:
            print(f"[control D={args.delay} seed={args.seed}] {len(losses)} sequences  loss/step {recent:.3f}  "
                  f"gate {synth.stats.gate:.2f}  skill {synth.stats.skill:.3f}", flush=True)
    out = {"variant": "true-gradient control" + (", no gate" if args.no_gate else ""), "delay": args.delay, "truncation": T, "seed": args.seed,
           "steps": len(losses), "wall_s": time.perf_counter() - t0,
           "final_loss": sum(losses[-50:]) / len(losses[-50:]), "solved_at": solved_at}
    print(json.dumps(out), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
