"""One worker per process over torch.distributed: the loop torchrun and Ray actors both run.

The tick: receive the start state (if it comes from the previous worker), forward, send the
final state on at once, backward (with the synthetic gradient), send delta back, receive the
deltas meant for this worker, then one all-reduce of gradients and both optimizers step.
"""
from __future__ import annotations

import datetime
import os
import time

import torch
import torch.distributed as dist

from .. import targets as tg
from ..config import Config
from ..engine.worker import Worker
from ..transport.base import Message
from ..transport.torch_dist import TorchDistTransport
from .common import Progress, maybe_checkpoint, metrics, resume_point, segments


def _header(kind: str, batch: int, chunk: int, like) -> Message:
    parts = tg.as_tuple(like)
    return Message(kind, batch, chunk, tuple(tuple(t.shape) for t in parts), parts[0].dtype)


def run_rank(cfg: Config, rank: int, world: int) -> dict:
    """Run this rank's worker to the end. The default process group must be initialised."""
    if world != cfg.workers:
        raise ValueError(f"world size {world} != --workers {cfg.workers}: launch one process per worker "
                         f"(torchrun --nproc-per-node {cfg.workers})")
    torch.set_num_threads(1)
    transport = TorchDistTransport(cfg.timeout_s, cfg.device)
    worker = Worker(cfg, rank)
    like = worker.state_like()
    start = resume_point(cfg, worker)
    progress = Progress(cfg, rank == 0, start)
    t0 = time.perf_counter()
    try:
        for sched in segments(cfg, start):
            worker.begin(sched)
            late = None      # overlap: the downstream action whose delta is absorbed next tick
            pending = None   # overlap: the all-reduce started last tick
            for t in range(sched.ticks):
                a = sched.action(0 if cfg.parallel == "data" else rank, t)
                received = None
                if a is not None and sched.receives_state(a):
                    parts = transport.recv(rank - 1, _header("state", a.batch, a.chunk - 1, like))
                    received = tg.like(parts, like)
                out = worker.forward(a, received)
                if out is not None:  # on at once, before this worker's own backward
                    transport.send(rank + 1, _header("state", a.batch, a.chunk, out), list(tg.as_tuple(out)))
                delta = worker.backward(a)
                if delta is not None:
                    transport.send(rank - 1, _header("delta", a.batch, a.chunk - 1, delta), list(tg.as_tuple(delta)))
                down = sched.delta_from(rank, t) if cfg.parallel == "pipeline" and cfg.mode == "dni" else None
                if cfg.sync == "exact":
                    _absorb(transport, worker, rank, down, like)
                    worker.apply(transport.all_reduce_sum(worker.grad_buffer()))
                else:
                    _absorb(transport, worker, rank, late, like)
                    late = down
                    buf = worker.grad_buffer()
                    if pending is not None:
                        worker.apply(transport.finish(pending))
                    pending = transport.start_all_reduce(buf)
                done = sched.first_batch + max(0, (t + 1) // sched.block - (cfg.workers - 1))
                progress.update(min(done, sched.first_batch + sched.batches), worker.losses)
            if pending is not None:  # overlap: drain before the segment ends
                worker.apply(transport.finish(pending))
                worker.forward(None)  # no chunk: clears gradients and this tick's targets
                _absorb(transport, worker, rank, late, like)
                worker.apply(transport.all_reduce_sum(worker.grad_buffer()))
            maybe_checkpoint(cfg, sched, worker, rank)
        transport.close()
    finally:
        progress.close()
    wall = time.perf_counter() - t0
    return metrics(cfg, worker.losses, wall, cfg.steps - start,
                   {"rank": rank, "skipped_chunks": worker.skipped, "synth_updates": worker.synth.stats.updates})


def _absorb(transport, worker, rank: int, down, like) -> None:
    """Receive the delta that ``down`` (the next worker's action) sent, and hand it to the worker."""
    if down is not None:
        parts = transport.recv(rank + 1, _header("delta", down.batch, down.chunk - 1, like))
        worker.absorb(down.batch, down.chunk - 1, tg.like(parts, like))


def init_from_env(cfg: Config) -> tuple[int, int]:
    """Initialise the default group from torchrun's environment (gloo on CPU, NCCL with CUDA)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    if cfg.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    # Keys of a restarted attempt must not meet the addresses the dead attempt left in the store
    # (seen here: the restarted group tried to connect to the killed process and failed), so
    # every attempt gets a store prefix of its own.
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=(rank == 0 and not agent_store), timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(f"dni_dist/attempt{attempt}", store),
                            rank=rank, world_size=world, timeout=timeout)
    return rank, world
