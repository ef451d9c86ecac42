"""What every runner shares: segments between checkpoints, metrics, progress."""
from __future__ import annotations

import json
import os
import resource
import sys
import time

from ..checkpoint import latest, save
from ..config import Config
from ..engine.schedule import Schedule


def segments(cfg: Config, start: int):
    """Batches ``[start, steps)`` cut at checkpoints. The pipeline drains at each cut so a
    checkpoint holds no message in flight, and a resumed run repeats the same computation."""
    every = cfg.checkpoint_every or cfg.steps
    b = start
    while b < cfg.steps:
        n = min(every - b % every, cfg.steps - b)
        yield Schedule(cfg.chunks, 1 if cfg.parallel == "data" else cfg.workers, n, first_batch=b)
        b += n


def resume_point(cfg: Config, worker) -> int:
    """Load the latest complete checkpoint into ``worker`` if resuming; return the next batch."""
    if not cfg.resume:
        return 0
    found = latest(cfg.checkpoint_dir)
    if found is None:
        return 0
    batch, state = found
    worker.load_state_dict(state["worker"])
    return batch


def maybe_checkpoint(cfg: Config, sched: Schedule, worker, rank: int) -> None:
    end = sched.first_batch + sched.batches
    if cfg.checkpoint_every and rank == 0 and (end % cfg.checkpoint_every == 0 or end == cfg.steps):
        save(cfg.checkpoint_dir, end, {"worker": worker.state_dict(), "config": cfg.to_dict()})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Progress:
    """A tqdm bar over batches showing loss and tokens/s; silent when disabled or off rank 0."""

    def __init__(self, cfg: Config, enabled: bool, start: int, label: str = ""):
        self.bar = None
        self.cfg, self.t0, self.start = cfg, time.perf_counter(), start
        if enabled and cfg.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=cfg.steps, initial=start, desc=label or f"{cfg.mode} K={cfg.workers}",
                            unit="batch", file=sys.stderr, dynamic_ncols=True)
        self.done = start

    def update(self, batches_done: int, losses: list) -> None:
        if self.bar is None:
            self.done = batches_done
            return
        recent = losses[-self.cfg.chunks:]
        tok = (batches_done - self.start) * self.cfg.batch * self.cfg.length / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(batches_done - self.done)
        self.done = batches_done
        if recent:
            self.bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", tok_s=f"{tok:,.0f}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


def metrics(cfg: Config, losses: list, wall_s: float, batches: int, extra: dict | None = None) -> dict:
    out = {"losses": losses, "tokens_per_s": batches * cfg.batch * cfg.length / max(wall_s, 1e-9),
           "wall_s": wall_s, "peak_rss_mb": peak_rss_mb(), "config": cfg.to_dict(), "pid": os.getpid()}
    out.update(extra or {})
    return out


def write_csv(path: str, losses: list) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write("step,loss\n")
            f.writelines(f"{i},{v}\n" for i, v in enumerate(losses))


def write_metrics(path: str, m: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(m, f)
