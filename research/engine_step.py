"""ms for the two per-tick costs the engine's apply() changed in round 4, on the engine's default
model (nn.LSTM H=256 on one input + readout, 265k parameters), one thread, run alone:
the model's Adam step (per-tensor loop vs fused) and the NaN/Inf check of its summed gradient
(element-wise mask vs one sum).

    python research/engine_step.py
"""
import time

import torch


def ms(fn, n=300):
    for _ in range(20):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def main():
    torch.set_num_threads(1)
    params = [*torch.nn.LSTM(1, 256, batch_first=True).parameters(), *torch.nn.Linear(256, 1).parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    for name, kw in (("per-tensor", {}), ("fused", {"fused": True})):
        opt = torch.optim.Adam(params, lr=1e-3, **kw)
        print(f"Adam step, {sum(p.numel() for p in params):,} parameters, {name}: {ms(opt.step):.2f} ms")
    flat = torch.cat([p.grad.flatten() for p in params])
    print(f"finite check, isfinite(g).all(): {ms(lambda: bool(torch.isfinite(flat).all())):.3f} ms; "
          f"isfinite(g.sum()): {ms(lambda: bool(torch.isfinite(flat.sum()))):.3f} ms")


if __name__ == "__main__":
    main()
