"""What the benchmark scripts share: the command-line shape, the budget loop, the JSON result.

    python examples/<task>.py --mode {tbptt,dni,bptt} --truncation T --seed S --budget-s SECONDS --json OUT
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from dni_dist import Synthesizer
from dni_dist.loops import train_batch
from dni_dist.tasks import pad_to_multiple


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--mode", choices=["tbptt", "dni", "bptt"], default="dni")
    p.add_argument("--truncation", type=int, default=3, help="chunk length T")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=60.0, help="wall-clock training budget in seconds")
    p.add_argument("--json", default="", help="write the result here")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the model")
    p.add_argument("--synth-lr", type=float, default=None, help="synthesizer learning rate (default: its own)")
    p.add_argument("--synth-kw", default="{}", help='extra Synthesizer options as JSON, e.g. \'{"discount": 1.0}\'')
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many batches too (0 = budget only)")
    p.add_argument("--clip", type=float, default=0.0, help="max grad norm (0 = off)")
    p.add_argument("--log-every", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--device", default="cpu", help="where the model and batches live (cpu, cuda, cuda:1, ...)")
    return p


def setup(args, model):
    torch.set_num_threads(1)
    model.to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    synth = None
    if args.mode == "dni":
        kw = {} if args.synth_lr is None else {"lr": args.synth_lr}
        kw.update(json.loads(args.synth_kw))
        synth = Synthesizer.for_rnn(model.rnn, **kw)
    return opt, synth


class Budget:
    """Loop until the wall-clock budget is spent, printing progress now and then."""

    def __init__(self, args):
        self.args, self.t0, self.last = args, time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def running(self, steps: int = 0) -> bool:
        if self.args.max_steps and steps >= self.args.max_steps:
            return False
        return self.elapsed() < self.args.budget_s

    def log(self, msg: str) -> None:
        if self.elapsed() - self.last >= self.args.log_every:
            self.last = self.elapsed()
            print(f"[{self.args.mode} T={self.args.truncation} seed={self.args.seed} {self.elapsed():5.0f}s] {msg}",
                  flush=True)


def bit_errors(model, x, y, mask, state=None):
    """Mean wrong bits per recall step of a batch (greedy threshold at 0.5)."""
    with torch.no_grad():
        logits, _ = model(x, model.initial_state(x.shape[0], device=x.device) if state is None else state)
        wrong = ((logits > 0).float() != y).float().sum(-1)
        return float((wrong * mask).sum() / mask.sum())


def curriculum(args, make_batch, level_name, n_levels_max, score_of, model, opt, synth, budget):
    level, solved, window, curve, steps, passed_at = 1, 0, [], [], 0, []
    gen = torch.Generator().manual_seed(args.seed)
    while budget.running(steps) and level <= n_levels_max:
        x, y, m = make_batch(level, gen)
        x, y, m = (t.to(args.device) for t in pad_to_multiple(x, y, m, args.truncation))
        err = bit_errors(model, x, y, m)  # measured before training on the batch: held-out
        train_batch(model, synth, opt, x, y, m, args.truncation, args.mode, clip=args.clip)
        steps += 1
        window.append(err)
        window = window[-args.window:]
        curve.append([round(budget.elapsed(), 2), level, err, solved])  # level attempted, score passed
        if len(window) == args.window and sum(window) / len(window) < 0.15:
            solved = score_of(level)
            passed_at.append([solved, steps])
            level, window = level + 1, []
        budget.log(f"batch {steps} {level_name}={level} bits/step={sum(window) / max(len(window), 1):.3f} "
                   f"solved={solved}")
    return {"steps": steps, "wall_s": budget.elapsed(), "max_len_solved": solved,
            "passed_at": passed_at,  # [score passed, batches trained when it passed]
            "curve": curve[::5]}


def finish(args, result: dict) -> dict:
    result = {"mode": args.mode, "truncation": args.truncation, "seed": args.seed, "lr": args.lr,
              "synth_kw": json.loads(args.synth_kw), **result}
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f)
    return result
