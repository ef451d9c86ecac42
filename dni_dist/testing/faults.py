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
    """Fail worker ``rank`` at batch ``at`` in ``mode`` ('raise', 'kill', 'stop' or 'nan'); with a
    ``marker_dir`` only once (a restarted group runs through)."""

    def __init__(self, at: int, rank: int, mode: str, marker_dir: str = ""):
        self.at, self.rank, self.mode, self.marker_dir = at, rank, mode, marker_dir

    @classmethod
    def from_config(cls, cfg) -> "Faults | None":
        if cfg.fail_at < 0:
            return None
        return cls(cfg.fail_at, cfg.fail_rank, cfg.fail_mode, cfg.checkpoint_dir)

    def before_chunk(self, position: int, a, sched) -> bool:
        """Called before each chunk; returns True when the chunk's inputs should be NaN."""
        if a.batch != self.at or position != self.rank or a.chunk != position * sched.block:
            return False
        if self.marker_dir:
            marker = os.path.join(self.marker_dir, f"failed-once-rank{position}")
            if os.path.exists(marker):
                return False
            os.makedirs(self.marker_dir, exist_ok=True)
            open(marker, "w").close()
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "stop":  # frozen, as by SIGSTOP: alive but silent
            os.kill(os.getpid(), signal.SIGSTOP)
        if self.mode == "raise":
            raise WorkerFailure(f"worker {position}: failing on purpose at batch {a.batch} (fail_at)")
        return True
