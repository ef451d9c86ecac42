"""Debug mode: one process runs K workers' tick loops in lockstep over the in-process transport.

The same loop as torchrun and Ray (:mod:`dni_dist.engine.loop`); the all-reduce is a sum in rank
order, which is what gloo computes for K = 2, so debug and torchrun runs match bitwise there.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from ..config import Config
from ..engine.worker import Worker
from ..run_plan import worker_settings
from ..transport.factory import local_transports
from .common import Reporter, finish, prepare_paths, resume_point, worker_run
from .early_stop import EarlyStop, local_agree


def run(cfg: Config, spec):
    """Train ``spec`` with ``cfg.workers`` simulated workers; returns ``(model, metrics)``."""
    torch.set_num_threads(1)
    prepare_paths(cfg)
    t_build = time.perf_counter()
    settings = worker_settings(cfg, spec)
    workers = [Worker(spec, settings, k) for k in range(cfg.workers)]  # identical replicas (same seed)
    start = 0
    for w in workers:
        start = resume_point(cfg, spec.name, w)
    reporter = Reporter(cfg, spec, workers[0], start)
    transports = local_transports(cfg.workers)
    t0 = time.perf_counter()
    try:
        def gather(k):  # at a checkpoint every other worker waits at the same tick's end
            return (lambda mine: [w.inflight_state() for w in workers]) if k == 0 else (lambda mine: None)
        # early stop (.early_stop): every worker reads rank 0's decision at the evaluation points
        stops = [EarlyStop(cfg, spec, reporter if k == 0 else None, local_agree(reporter)) for k in range(cfg.workers)]
        loops = [worker_run(cfg, spec, w, tr, start, reporter if k == 0 else None, gather(k), stops[k])
                 for k, (w, tr) in enumerate(zip(workers, transports))]
        alive = True
        while alive:  # lockstep: every loop to its next synchronisation point, in rank order
            alive = False
            for loop in loops:
                try:
                    next(loop)
                    alive = True
                except StopIteration:
                    pass
    except BaseException:
        reporter.close()
        raise
    stop = stops[0]
    if stop.end is not None:  # the run ended as a run of --steps stop.end ends
        cfg = dataclasses.replace(cfg, steps=stop.end)
    m = finish(cfg, workers[0], reporter, t0, t0 - t_build, start, {"stopped": stop.reason} if stop.end else None)
    return workers[0].model, m
