"""Where a chunk of the seed API reads tensor values back to Python (``.item()``, ``.tolist()``,
``float()``, ``bool()``): on a GPU each read of a GPU tensor is a host-device synchronisation,
which stalls the launch queue of a launch-bound step. Counted here on the CPU (where they cost
little), per chunk, by the innermost line of dni_dist or of this script that asked; reads of
tensors made on the host by design (the synthesizer's evidence vector) are counted too.

    python benchmarks/host_reads.py
"""
import collections
import sys
import traceback

import torch
from torch import nn

from dni_dist import Synthesizer
from dni_dist import targets as tg

READS = ("item", "tolist", "__bool__", "__float__", "__int__")


def count(mode: str, chunks: int = 200, warmup: int = 100):
    torch.manual_seed(0)
    B, H, V, T = 32, 128, 60, 5
    emb, rnn, head = nn.Embedding(V, H), nn.LSTM(H, H, batch_first=True), nn.Linear(H, V)
    opt = torch.optim.Adam([*emb.parameters(), *rnn.parameters(), *head.parameters()], lr=1e-3, fused=True)
    synth = Synthesizer() if mode == "dni" else None
    x = torch.randint(0, V, (B, (chunks + warmup) * T + 1))
    state = (torch.zeros(1, B, H), torch.zeros(1, B, H))
    sites = collections.Counter()
    orig = {n: getattr(torch.Tensor, n) for n in READS}

    def wrap(name):
        f = orig[name]

        def read(self, *a, **k):
            frames = [fr for fr in traceback.extract_stack()[:-1]
                      if "dni_dist" in fr.filename or fr.filename.endswith("host_reads.py")]
            fr = frames[-1]
            sites[f"{fr.filename.split('/')[-1]}:{fr.lineno} {fr.line} [{name}]"] += 1
            return f(self, *a, **k)
        return read

    try:
        for c in range(chunks + warmup):
            if c == warmup:
                for n in READS:
                    setattr(torch.Tensor, n, wrap(n))
            s = c * T
            out, state = rnn(emb(x[:, s:s + T]), state)
            loss = nn.functional.cross_entropy(head(out).transpose(1, 2), x[:, s + 1:s + 1 + T])
            state = synth.backward_synthetic(state, loss) if synth else tg.detach(state)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if synth and (c + 1) % 8 == 0:
                synth.step()
    finally:
        for n in READS:
            setattr(torch.Tensor, n, orig[n])
    return sum(sites.values()) / chunks, {k: v / chunks for k, v in sites.most_common()}


def main():
    for mode in ("tbptt", "dni"):
        total, sites = count(mode)
        print(f"{mode}: {total:.2f} host reads per chunk (model optimizer: fused Adam)")
        for k, v in sites.items():
            print(f"  {v:5.2f}  {k}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
