"""DNI's cost per update against plain truncated BPTT, through the seed API, in process CPU time
(one thread; less sensitive to other load than wall-clock, but run it alone for numbers you quote).

Data: Shakespeare characters (the synthesizer's gate, and with it whether the J^T g pass runs,
depends on what it can predict, so random tokens would under-count it). Shapes: the char-LM
setting (embedding -> LSTM H=128, T=5, B=32, a model step per chunk) and the engine's setting
(LSTM H=256, T=16, B=32). Prints ms per chunk for TBPTT and DNI, their
ratio, and where DNI's extra time goes (prediction, J^T g for the discounted target, synthesizer
update). Writes JSON with --out.

    python benchmarks/cost_per_update.py --chunks 400 --repeats 3 --out runs/cost.json
"""
import argparse
import json
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch import nn

from dni_dist import Synthesizer
from dni_dist import synthesizer as synth_mod
from dni_dist import targets as tg
from dni_dist.tasks import CharCorpus, load_corpus

SETTINGS = {"char-LM H=128 T=5": dict(hidden=128, T=5),
            "engine H=256 T=16": dict(hidden=256, T=16)}


class Spent:
    """Process CPU seconds spent inside a few named functions (patched for the measurement)."""

    def __init__(self):
        self.s = defaultdict(float)

    @contextmanager
    def patched(self, owner, name, label):
        fn = getattr(owner, name)

        def timed(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.s[label] += time.process_time() - t
        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, fn)


def run(mode, hidden, T, chunks, batch=32, synth_kw=None):
    torch.manual_seed(0)
    corpus = CharCorpus(load_corpus("shakespeare"))
    vocab = corpus.vocab
    emb, rnn, head = nn.Embedding(vocab, hidden), nn.LSTM(hidden, hidden, batch_first=True), nn.Linear(hidden, vocab)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    synth = Synthesizer(**(synth_kw or {})) if mode == "dni" else None
    # measured after a warm-up: 20 chunks, plus the gate's warm-up (gate_warmup updates, one per
    # trained cut), during which no J^T g pass is needed and the cost is not the steady state's
    warm = 20 + (synth.gate_warmup * synth.train_every if synth else 0)
    x = corpus.streams("train", batch)[:, :(chunks + warm) * T + 1]
    state = (torch.zeros(1, batch, hidden), torch.zeros(1, batch, hidden))
    spent = Spent()
    t0 = None
    with spent.patched(Synthesizer, "synthetic_gradient", "predict"), \
            spent.patched(tg, "synthetic_vjp", "J^T g (discounted target)"), \
            spent.patched(Synthesizer, "_resolve", "synthesizer update"):
        synth_mod.tg = tg  # the module looks synthetic_vjp up through tg
        for c in range(chunks + warm):
            if c == warm:  # warm-up done (the synthesizer's scale is set and its gate may open)
                t0, spent.s = time.process_time(), defaultdict(float)
            s = c * T
            out, state = rnn(emb(x[:, s:s + T]), state)
            loss = nn.functional.cross_entropy(head(out).transpose(1, 2), x[:, s + 1:s + 1 + T])
            state = synth.backward_synthetic(state, loss) if synth else tg.detach(state)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if synth and (c + 1) % 8 == 0:
                synth.step()
    total = time.process_time() - t0
    return {"ms_per_chunk": 1000 * total / chunks, "gate_at_end": float(synth.stats.gate) if synth else None,
            "parts_ms_per_chunk": {k: 1000 * v / chunks for k, v in spent.s.items()}}


def adam_step_ms(dim=512, steps=300):
    """ms per Adam step on a dim x dim synthesizer, per-tensor loop vs fused (what Synthesizer uses)."""
    out = {}
    for name, kw in (("per-tensor", {}), ("fused", {"fused": True})):
        net = nn.Linear(dim, dim)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, **kw)
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        for _ in range(20):
            opt.step()
        t = time.process_time()
        for _ in range(steps):
            opt.step()
        out[name] = 1000 * (time.process_time() - t) / steps
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=400)
    p.add_argument("--synth-kw", default="{}", help="Synthesizer options as JSON")
    p.add_argument("--gate", choices=("default", "shut", "open"), default="default",
                   help="shut: factor 0 with the gate on (it never opens: the cost of DNI when it is not helping); "
                        "open: gate off, factor 1 (every cut injects and takes its J^T g pass)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--repeats", type=int, default=1,
                   help="TBPTT/DNI pairs per setting, back to back; the median pair's ratio is reported "
                        "(this machine's speed drifts by tens of percent between runs)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = {}
    synth_kw = {**json.loads(args.synth_kw), **{"default": {}, "shut": {"factor": 0.0},
                                                  "open": {"gate": False}}[args.gate]}
    print(f"[contended unless run alone] gate={args.gate} synth_kw={synth_kw}", flush=True)
    for name in args.settings:
        kw = SETTINGS[name]
        pairs = []
        for _ in range(args.repeats):
            tb = run("tbptt", chunks=args.chunks, **kw)
            dn = run("dni", chunks=args.chunks, synth_kw=synth_kw, **kw)
            pairs.append({"tbptt": tb, "dni": dn, "ratio": dn["ms_per_chunk"] / tb["ms_per_chunk"]})
            parts = ", ".join(f"{k} {v:.2f}" for k, v in dn["parts_ms_per_chunk"].items())
            print(f"{name}: TBPTT {tb['ms_per_chunk']:.2f} ms/chunk, DNI {dn['ms_per_chunk']:.2f} "
                  f"({pairs[-1]['ratio']:.2f}x, gate at end {dn['gate_at_end']:.3f}); DNI parts (ms/chunk): {parts}",
                  flush=True)
        rows[name] = dict(sorted(pairs, key=lambda r: r["ratio"])[(len(pairs) - 1) // 2])
        rows[name]["ratios"] = [r["ratio"] for r in pairs]
        if len(pairs) > 1:
            print(f"{name}: median ratio {rows[name]['ratio']:.2f}x of {', '.join(f'{r:.2f}' for r in rows[name]['ratios'])}")
    adam = adam_step_ms()
    print(f"Adam step, 512x512 synthesizer: per-tensor {adam['per-tensor']:.2f} ms, fused {adam['fused']:.2f} ms")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"chunks": args.chunks, "synth_kw": args.synth_kw, "rows": rows, "adam_step_ms": adam}, f,
                      indent=1)


if __name__ == "__main__":
    main()
