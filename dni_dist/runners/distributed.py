"""One worker per process over torch.distributed: what torchrun and the Ray actors both run."""
from __future__ import annotations

import dataclasses
import datetime
import os
import time

import torch
import torch.distributed as dist

from ..config import Config
from ..engine.worker import Worker
from ..run_plan import worker_settings
from ..transport.factory import process_transport
from .common import Reporter, finish, prepare_paths, resume_point, worker_run
from .early_stop import EarlyStop, broadcast_agree


def run_rank(cfg: Config, spec, rank: int, world: int):
    """Run this rank's worker to the end (the default process group must be initialised; its
    size is ``cfg.workers``: :func:`dni_dist.fit.resolve` checks it under torchrun, and the Ray
    runner starts that many actors). Returns ``(model, metrics)``."""
    torch.set_num_threads(1)
    if cfg.pin_cores:
        pin_to_core(int(os.environ.get("LOCAL_RANK", rank)))
    if rank == 0:
        prepare_paths(cfg)
    t_build = time.perf_counter()
    transport = process_transport(cfg.timeout_s, cfg.device, cfg.reduce)
    data = cfg.parallel == "data"
    worker = Worker(spec, worker_settings(cfg, spec), 0 if data else rank, share=(rank, world) if data else (0, 1))
    start = resume_point(cfg, spec.name, worker)
    reporter = Reporter(cfg, spec, worker, start) if rank == 0 else None
    stop = EarlyStop(cfg, spec, reporter, broadcast_agree(worker.device, cfg.timeout_s))  # rank 0's word to all
    t0 = time.perf_counter()
    try:
        for _ in worker_run(cfg, spec, worker, transport, start, reporter, lambda mine: _gather_to_first(mine, world),
                            stop):
            pass
        by_rank = _gather_breakdowns(worker.timers.s, world)
        transport.close()
    except BaseException:
        if reporter is not None:
            reporter.close()
        raise
    extra = {"rank": rank, "tick_breakdown_s_by_rank": by_rank}
    if stop.end is not None:  # every rank ended at the same batch, as a run of --steps stop.end ends
        cfg = dataclasses.replace(cfg, steps=stop.end)
        if rank == 0:
            extra["stopped"] = stop.reason
    m = finish(cfg, worker, reporter, t0, t0 - t_build, start, extra)
    return worker.model, m


def pin_to_core(local_rank: int) -> int:
    """Pin every thread of this process (gloo's too: they exist by now) to one core: the
    ``local_rank``-th of the cores it may use, wrapping around. Returns the core."""
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("--pin-cores needs os.sched_setaffinity (Linux); leave it off on this system")
    cores = sorted(os.sched_getaffinity(0))
    core = cores[local_rank % len(cores)]
    for _ in range(3):  # again if an unpinned thread started a new one meanwhile
        moved = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                if os.sched_getaffinity(int(tid)) != {core}:
                    os.sched_setaffinity(int(tid), {core})
                    moved += 1
            except (ProcessLookupError, FileNotFoundError):  # a thread that ended meanwhile
                pass
        if not moved:
            break
    return core


def _gather_to_first(obj, world: int):
    """Every rank's ``obj`` on rank 0 (a list by rank; None elsewhere): a checkpoint's in-flight states."""
    got = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(obj, got, dst=0)
    return got


def _gather_breakdowns(seconds: dict, world: int) -> list[dict]:
    """Every rank's tick breakdown (rank 0's alone hides the slowest worker the others wait for)."""
    got = [None] * world
    dist.all_gather_object(got, seconds)
    return got


def cuda_device(local_rank: int, local_world: int) -> int:
    """The GPU of this rank: one per local rank (NCCL cannot put two ranks on one GPU)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_world > gpus:
        raise ValueError(f"--device cuda: this machine runs {local_world} ranks but sees {gpus} GPU(s); NCCL needs "
                         f"one GPU per rank: start at most {gpus} (torchrun --nproc-per-node {max(gpus, 1)}) or use "
                         "--device cpu")
    return local_rank


def init_from_env(cfg: Config) -> tuple[int, int]:
    """Initialise the default group from torchrun's environment (gloo on CPU, NCCL with CUDA)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    if cfg.device == "cuda":
        torch.cuda.set_device(cuda_device(int(os.environ.get("LOCAL_RANK", rank)),
                                          int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    # Keys of a restarted attempt must not meet the addresses the dead attempt left in the store
    # (seen here: the restarted group tried to connect to the killed process and failed), so
    # every attempt gets a store prefix of its own.
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    host, master = os.environ["MASTER_ADDR"], rank == 0 and not agent_store
    listen = {}
    if master and host in ("127.0.0.1", "localhost"):  # TCPStore alone would bind every interface
        from ..torchrun_local import loopback_listener
        listen["master_listen_fd"] = loopback_listener(int(os.environ["MASTER_PORT"]))
    store = dist.TCPStore(host, int(os.environ["MASTER_PORT"]), world, is_master=master, timeout=timeout, **listen)
    dist.init_process_group(backend, store=dist.PrefixStore(f"dni_dist/attempt{attempt}", store),
                            rank=rank, world_size=world, timeout=timeout)
    return rank, world
