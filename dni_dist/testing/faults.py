"""Fault injection: make one worker raise, die (SIGKILL), freeze (SIGSTOP) or see NaN inputs at a chosen batch.

A test hook, not a user option: driven by the config's ``fail_at`` / ``fail_rank`` / ``fail_mode``
(``--fail-*`` on the command line, hidden from ``--help``) so that the reliability tests can reach
every launcher (torchrun processes and Ray actors receive the config). With a checkpoint directory the
fault happens once: a marker file records it, so a restarted group runs through.
"""
from __future__ import annotations

import os
import signal


class WorkerFailure(RuntimeError):
    """Raised on purpose by the ``fail_mode="raise"`` aid."""


class Faults:
    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg) -> "Faults | None":
        return cls(cfg) if cfg.fail_at >= 0 else None

    def before_chunk(self, position: int, a, sched) -> bool:
        """Called before each chunk; returns True when the chunk's inputs should be NaN."""
        cfg = self.cfg
        if a.batch != cfg.fail_at or position != cfg.fail_rank or a.chunk != position * sched.block:
            return False
        if cfg.checkpoint_dir:
            marker = os.path.join(cfg.checkpoint_dir, f"failed-once-rank{position}")
            if os.path.exists(marker):
                return False
            os.makedirs(cfg.checkpoint_dir, exist_ok=True)
            open(marker, "w").close()
        if cfg.fail_mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if cfg.fail_mode == "stop":  # frozen, as by SIGSTOP: alive but silent
            os.kill(os.getpid(), signal.SIGSTOP)
        if cfg.fail_mode == "raise":
            raise WorkerFailure(f"worker {position}: failing on purpose at batch {a.batch} (fail_at)")
        return True
