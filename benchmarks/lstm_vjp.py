"""What the discounted target's ``J^T g`` pass costs with ``nn.LSTM`` on a CPU, with oneDNN (PyTorch's
default there) and without. oneDNN's LSTM backward computes every gradient at once (weights and
input included), so a pass that needs only the start state's gradient costs a full backward; the
native kernels let autograd skip the rest. Prints microseconds per forward, full backward and
``J^T g`` pass, and the open-gate chunk's forward + backward + ``J^T g`` against forward + backward.

    python benchmarks/lstm_vjp.py            # run it alone: it is a timing
"""
import argparse
import time

import torch
from torch import nn


def micros(fn, n: int) -> float:
    for _ in range(10):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return 1e6 * (time.perf_counter() - t) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("shape | oneDNN | forward us | full backward us | J^T g us | (fwd + bwd + J^T g) / (fwd + bwd)")
    for hidden, T in ((128, 5), (256, 16)):
        rnn = nn.LSTM(hidden, hidden, batch_first=True)
        x = torch.randn(args.batch, T, hidden)
        params = list(rnn.parameters())
        for onednn in (True, False):
            with torch.backends.mkldnn.flags(enabled=onednn):
                h0 = tuple(torch.zeros(1, args.batch, hidden, requires_grad=True) for _ in range(2))
                out, (h, c) = rnn(x, h0)
                g = [torch.randn_like(h), torch.randn_like(c)]
                fwd = micros(lambda: rnn(x, h0), args.repeats)
                full = micros(lambda: torch.autograd.grad([out, h, c], list(h0) + params, [torch.ones_like(out)] + g,
                                                          retain_graph=True), args.repeats)
                vjp = micros(lambda: torch.autograd.grad([h, c], list(h0), g, retain_graph=True), args.repeats)
            print(f"H={hidden} T={T} B={args.batch} | {'on' if onednn else 'off'} | {fwd:.0f} | {full:.0f} | {vjp:.0f} | "
                  f"{(fwd + full + vjp) / (fwd + full):.2f}", flush=True)


if __name__ == "__main__":
    main()
