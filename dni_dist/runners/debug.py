"""Debug mode: one process simulates K workers with the same Worker code, tick by tick.

The gradient "all-reduce" is a sum in rank order, which is what gloo computes for K = 2, so
debug and torchrun runs match bitwise there.
"""
from __future__ import annotations

import time

import torch

from ..config import Config
from ..engine.worker import Worker
from .common import Progress, maybe_checkpoint, metrics, resume_point, segments


def _sum(bufs):
    """The all-reduce of debug mode: a sum in rank order."""
    total = bufs[0]
    for b in bufs[1:]:
        total = total + b
    return total


def run(cfg: Config) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    workers = [Worker(cfg, k) for k in range(cfg.workers)]  # identical replicas (same seed)
    start = 0
    for w in workers:
        start = resume_point(cfg, w)
    progress = Progress(cfg, True, start)
    try:
        for sched in segments(cfg, start):
            for w in workers:
                w.begin(sched)
            inbox: dict = {}
            late: list = []       # overlap: deltas absorbed one tick after they were sent
            pending = None        # overlap: the summed buffer applied one tick late
            for t in range(sched.ticks):
                acts = [sched.action(k, t) for k in range(cfg.workers)]
                sent = {}
                for k, w in enumerate(workers):
                    out = w.forward(acts[k], inbox.get(k))
                    if out is not None:
                        sent[k + 1] = out
                arrived = []
                for k, w in enumerate(workers):
                    delta = w.backward(acts[k])
                    if delta is not None:
                        arrived.append((k - 1, acts[k].batch, acts[k].chunk - 1, delta))
                if cfg.sync == "exact":
                    late, arrived = arrived, []
                for k, b, c, d in late:
                    workers[k].absorb(b, c, d)
                late = arrived
                total = _sum([w.grad_buffer() for w in workers])
                if cfg.sync == "exact":
                    pending, total = total, None
                if pending is not None:
                    for w in workers:
                        w.apply(pending)
                pending = total
                inbox = sent
                done = sched.first_batch + max(0, (t + 1) // sched.block - (cfg.workers - 1))
                progress.update(min(done, sched.first_batch + sched.batches), workers[0].losses)
            if pending is not None:  # overlap: drain before the segment ends
                for w in workers:
                    w.apply(pending)
                    w.forward(None)  # no chunk: clears gradients and this tick's targets
                for k, b, c, d in late:
                    workers[k].absorb(b, c, d)
                total = _sum([w.grad_buffer() for w in workers])
                for w in workers:
                    w.apply(total)
            maybe_checkpoint(cfg, sched, workers[0], 0)
    finally:
        progress.close()
    wall = time.perf_counter() - t0
    return metrics(cfg, workers[0].losses, wall, cfg.steps - start,
                   {"skipped_chunks": sum(w.skipped for w in workers), "synth_updates": workers[0].synth.stats.updates})
