"""Which worker runs which chunk at which tick, and which messages that implies: plain data.

A sequence of ``chunks`` chunks is cut into ``workers`` contiguous blocks of
``M = chunks // workers`` chunks; worker k owns chunks ``k*M .. (k+1)*M - 1`` of every batch.
Batches are pipelined: worker k runs batch ``b`` at ticks ``(b + k) * M .. (b + k + 1) * M - 1``,
so in steady state every worker computes every tick, worker k one block behind worker k-1.
Contiguous blocks (rather than chunk c on worker c mod K) keep one boundary per block crossing
workers, and a round-robin assignment would put two chunks on one worker in the same tick.

Messages (one tick = one chunk per worker, then one all-reduce):
- ``state``: the last chunk of a block sends its final state forward at once, before its own
  backward; the next worker uses it one tick later.
- ``delta``: the first chunk of a block (k > 0) sends the gradient at its start state back; the
  previous worker uses it as the target of the prediction it made there, in the same tick's
  synthesizer update (before the all-reduce that ends the tick).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Action:
    """Worker ``worker`` runs chunk ``chunk`` of batch ``batch`` at tick ``tick``."""
    tick: int
    worker: int
    batch: int
    chunk: int

    def __str__(self) -> str:  # like torch pipelining's "2F0": worker, batch, chunk
        return f"{self.worker}B{self.batch}C{self.chunk}"


@dataclass(frozen=True)
class Schedule:
    chunks: int
    workers: int
    batches: int
    first_batch: int = 0
    """batch number of the schedule's first batch (a run resumed from a checkpoint starts later)."""

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1; got {self.workers}")
        if self.chunks < self.workers or self.chunks % self.workers:
            raise ValueError(f"chunks per sequence ({self.chunks}) must be a positive multiple of "
                             f"workers ({self.workers}): each worker owns a contiguous block of chunks")
        if self.batches < 1:
            raise ValueError(f"batches must be >= 1; got {self.batches}")

    @property
    def block(self) -> int:
        return self.chunks // self.workers

    @property
    def ticks(self) -> int:
        return (self.batches + self.workers - 1) * self.block

    def action(self, worker: int, tick: int) -> Action | None:
        j = tick - worker * self.block
        if j < 0:
            return None
        batch = j // self.block
        if batch >= self.batches:
            return None
        return Action(tick, worker, self.first_batch + batch, worker * self.block + j % self.block)

    def owner(self, chunk: int) -> int:
        return chunk // self.block

    def sends_state(self, a: Action) -> bool:
        """The chunk's final state goes to the next worker."""
        return a.chunk % self.block == self.block - 1 and a.chunk < self.chunks - 1

    def receives_state(self, a: Action) -> bool:
        return a.chunk % self.block == 0 and a.chunk > 0

    def sends_delta(self, a: Action) -> bool:
        """The gradient at the chunk's start goes back to the previous worker."""
        return self.receives_state(a)

    def delta_from(self, worker: int, tick: int) -> Action | None:
        """The downstream action whose delta ``worker`` receives at ``tick`` (or None)."""
        if worker + 1 >= self.workers:
            return None
        a = self.action(worker + 1, tick)
        return a if a is not None and self.sends_delta(a) else None

    def table(self) -> str:
        """The schedule as text: one row per worker, one column per tick."""
        rows = []
        for w in range(self.workers):
            cells = [str(self.action(w, t) or "-") for t in range(self.ticks)]
            rows.append(f"worker {w}: " + " ".join(f"{c:>8}" for c in cells))
        return "\n".join(rows)

    def check(self) -> None:
        """Dry-run the message pattern: every send has a matching receive one tick later (states)
        or in the same tick (deltas), and every chunk of every batch runs once, in order."""
        seen = {}
        for t in range(self.ticks):
            for w in range(self.workers):
                a = self.action(w, t)
                if a is None:
                    continue
                key = (a.batch, a.chunk)
                if key in seen:
                    raise AssertionError(f"{a} runs chunk {key} twice")
                if a.chunk > 0 and seen.get((a.batch, a.chunk - 1), t) >= t:
                    raise AssertionError(f"{a} runs before chunk {a.chunk - 1} of batch {a.batch}")
                seen[key] = t
                if self.receives_state(a):
                    prev = self.action(w - 1, t - 1)
                    if prev is None or (prev.batch, prev.chunk) != (a.batch, a.chunk - 1) or not self.sends_state(prev):
                        raise AssertionError(f"{a} expects a state from worker {w - 1} at tick {t - 1}")
        if len(seen) != self.chunks * self.batches or min(b for b, _ in seen) != self.first_batch:
            raise AssertionError(f"{len(seen)} chunks ran; expected {self.chunks * self.batches}")
