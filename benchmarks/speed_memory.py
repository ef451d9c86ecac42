"""Speed vs truncation T and memory vs sequence length for full BPTT, TBPTT and DNI, through the
seed API (nn.LSTM, H=256, B=32, one thread); plus the overhead of backward_synthetic + step.

    python benchmarks/speed_memory.py --out docs
Memory is the peak size of the tensors autograd saves for backward (counted exactly with
saved_tensors_hooks): the activation memory that grows as O(L) for BPTT and O(T) for TBPTT/DNI.
"""
import argparse
import json
import os
import time

import torch
from torch import nn

from dni_dist import Synthesizer
from dni_dist import targets as tg

H, B = 256, 32


class SavedBytes:
    """Peak bytes held by autograd for one graph (reset after each backward)."""

    def __init__(self):
        self.live, self.peak = 0, 0

    def pack(self, t):
        self.live += t.numel() * t.element_size()
        self.peak = max(self.peak, self.live)
        return t

    def reset(self):
        self.live = 0


def train(mode, T, L, batches, rnn, head, synth, opt, counter=None):
    x = torch.randn(B, L, 1)
    y = torch.randint(0, 2, (B, L, 1)).float()
    span = L if mode == "bptt" else T
    t0 = time.perf_counter()
    for _ in range(batches):
        h = None
        for c in range(L // span):
            sl = slice(c * span, (c + 1) * span)
            if counter is not None:
                with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                    out, h = rnn(x[:, sl], h)
                    loss = nn.functional.binary_cross_entropy_with_logits(head(out), y[:, sl], reduction="sum") / B
            else:
                out, h = rnn(x[:, sl], h)
                loss = nn.functional.binary_cross_entropy_with_logits(head(out), y[:, sl], reduction="sum") / B
            if mode == "dni":
                h = synth.backward_synthetic(h, loss, last=c == L // span - 1)
            else:
                h = tg.detach(h)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if counter is not None:
                counter.reset()
        if mode == "dni":
            synth.step()
    return time.perf_counter() - t0


def setup(mode):
    torch.manual_seed(0)
    rnn = nn.LSTM(1, H, batch_first=True)
    head = nn.Linear(H, 1)
    opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)
    synth = Synthesizer.for_rnn(rnn) if mode == "dni" else None
    return rnn, head, synth, opt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="docs")
    p.add_argument("--tokens", type=int, default=40_000, help="tokens per speed measurement")
    args = p.parse_args()
    torch.set_num_threads(1)
    res = {"speed": [], "memory": [], "overhead": None}
    L = 64
    for T in (2, 4, 8, 16, 32):
        for mode in ("tbptt", "dni", "bptt"):
            if mode == "bptt" and T != 2:
                continue  # full BPTT does not depend on T
            parts = setup(mode)
            train(mode, T, L, 2, *parts)  # warm-up
            batches = max(2, args.tokens // (B * L))
            wall = train(mode, T, L, batches, *parts)
            row = {"mode": mode, "T": T, "L": L, "tokens_per_s": batches * B * L / wall}
            res["speed"].append(row)
            print(json.dumps(row), flush=True)
    for L in (32, 64, 128, 256, 512):
        for mode in ("tbptt", "dni", "bptt"):
            counter = SavedBytes()
            train(mode, 8, L, 1, *setup(mode), counter=counter)
            row = {"mode": mode, "T": 8, "L": L, "saved_mb": counter.peak / 2**20}
            res["memory"].append(row)
            print(json.dumps(row), flush=True)
    # overhead of the three added lines (issue 2: nn.LSTM H=256, B=32, T=8)
    t = {}
    for mode in ("tbptt", "dni"):
        parts = setup(mode)
        train(mode, 8, 64, 2, *parts)
        t[mode] = min(train(mode, 8, 64, 20, *parts) for _ in range(3))
    res["overhead"] = {"tbptt_s": t["tbptt"], "dni_s": t["dni"], "ratio": t["dni"] / t["tbptt"],
                       "setting": "nn.LSTM H=256 B=32 T=8, 20 sequences of 64 steps, best of 3"}
    print(json.dumps(res["overhead"]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "speed_memory.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(res, args.out)


def plot(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"tbptt": "tab:red", "dni": "tab:blue", "bptt": "tab:gray"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode in ("tbptt", "dni"):
        rows = [r for r in res["speed"] if r["mode"] == mode]
        a.plot([r["T"] for r in rows], [r["tokens_per_s"] for r in rows], "o-", color=colors[mode], label=mode)
    bp = [r for r in res["speed"] if r["mode"] == "bptt"][0]
    a.axhline(bp["tokens_per_s"], color=colors["bptt"], ls="--", label=f"bptt (L={bp['L']})")
    a.set_xscale("log", base=2)
    a.set_xlabel("truncation T")
    a.set_ylabel("tokens / s (1 CPU thread)")
    a.set_title("speed: nn.LSTM H=256, B=32")
    a.legend()
    for mode in ("tbptt", "dni", "bptt"):
        rows = [r for r in res["memory"] if r["mode"] == mode]
        b.plot([r["L"] for r in rows], [r["saved_mb"] for r in rows], "o-", color=colors[mode], label=mode)
    b.set_xscale("log", base=2)
    b.set_yscale("log")
    b.set_xlabel("sequence length L")
    b.set_ylabel("peak autograd-saved MB")
    b.set_title("activation memory (T=8)")
    b.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "speed_memory.png"), dpi=90)


if __name__ == "__main__":
    main()
