"""Early stopping in every launch mode (debug, torchrun, Ray): where rank 0's decision to stop
reaches every rank, and where the run then ends.

Rank 0 evaluates when the batches done cross a multiple of ``--eval-every``
(:meth:`Reporter.update`); which ticks those are follows from the schedule, so every rank knows
them without a message. At each (and only there), once the tick is over, every rank takes part in
one tiny collective: rank 0's word, stop or go on (``agree``: a broadcast of one int over the
default process group, bounded by ``--timeout-s``; in debug mode a read of rank 0's hooks).
Nothing is read back or sent between evaluation points.

A stop cuts the schedule after the batches already started: they finish, none starts, the pipeline
drains, and the run ends (final evaluation, checkpoint, metrics, ``--save``) as a run with
``--steps`` = that many batches ends. The cut schedule's ticks up to the stop are the whole run's
(a batch's start tick never depends on later batches), so the stopped run computes what the
shorter run computes. At K = 1 nothing is in flight and the run ends at the evaluated batch; at
K > 1 the batches in flight (about one) end it a little later.
"""
from __future__ import annotations

import dataclasses
import datetime

import torch


class EarlyStop:
    """One per rank: whether a tick is an evaluation point, and the stop decision there.

    ``reporter`` is rank 0's (None elsewhere); ``agree(flag)`` returns rank 0's ``flag`` on every
    rank. ``end`` is the batch the run ends at once stopped (None while it runs on)."""

    def __init__(self, cfg, spec, reporter, agree):
        self.on = bool(cfg.early_stop and cfg.eval_every and getattr(spec, "evaluate", None) is not None)
        self.cfg, self.reporter, self.agree = cfg, reporter, agree
        self.end: int | None = None
        self.reason = ""

    def due(self, sched, tick: int) -> bool:
        """Rank 0 evaluated at the end of ``tick`` (the rule :meth:`Reporter.update` follows)."""
        if not self.on or self.end is not None:
            return False
        every = self.cfg.eval_every
        done = sched.first_batch + sched.done_by(tick)
        before = sched.first_batch + sched.done_by(tick - 1)
        return done // every > before // every and done < self.cfg.steps

    def cut(self, sched, tick: int):
        """At an evaluation point, every rank: None to go on, or the schedule cut after the batches
        started by ``tick`` (the run then ends with them)."""
        why = self.reporter.hooks.stop if self.reporter is not None else ""
        if not self.agree(1 if why else 0):
            return None
        short = dataclasses.replace(sched, batches=sched.started_by(tick))
        self.end = short.last + 1
        if self.reporter is not None:
            done = sched.first_batch + sched.done_by(tick)
            self.reason = why if self.end == done else \
                f"{why}; the {self.end - done} batch(es) in flight finish: the run ends at batch {self.end}"
            self.reporter.end_at(self.end)
            self.reporter.say(f"[{self.reporter.label}] {self.reason}")
        return short


def local_agree(reporter):
    """Debug mode: every worker reads rank 0's hooks (they wait at the same tick's end)."""
    return lambda flag: 1 if reporter.hooks.stop else 0


def broadcast_agree(device, timeout_s: float):
    """torch.distributed: rank 0's flag to every rank, one int64 over the default group; a rank
    that does not hear within ``timeout_s`` raises instead of hanging."""
    import torch.distributed as dist

    def agree(flag: int) -> int:
        t = torch.tensor([flag], dtype=torch.int64, device=device)
        work = dist.broadcast(t, src=0, async_op=True)
        try:
            work.wait(timeout=datetime.timedelta(seconds=timeout_s))
        except RuntimeError as e:
            raise RuntimeError(f"early stop: rank {dist.get_rank()} did not get rank 0's stop/continue word within "
                               f"--timeout-s {timeout_s:g} s (rank 0 died or hangs?): {str(e)[:200]}") from None
        return int(t.item())
    return agree
