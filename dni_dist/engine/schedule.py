"""Which worker runs which chunk at which tick, and which messages that implies: plain data.

A sequence of ``chunks`` chunks is cut into ``workers`` contiguous blocks of
``M = chunks // workers`` chunks; worker k owns chunks ``k*M .. (k+1)*M - 1`` of every batch.
Batch b starts at tick ``start(b)`` on worker 0 and reaches worker k ``k*M`` ticks later, so in
steady state every worker computes every tick, worker k one block behind worker k-1.
Contiguous blocks (rather than chunk c on worker c mod K) keep one boundary per block crossing
workers, and a round-robin assignment would put two chunks on one worker in the same tick.

Streams (``stream_groups = G >= 1``): batch b continues batch b - G's streams, so batch b cannot
start before batch b - G has left the last worker. ``start(b) = max(start(b-1) + M,
end(b-G) + 1)``: with G >= K that is ``b*M`` (no stall: the hand-off has slack); with G < K every
batch waits and the pipeline runs at G/K of its speed.

Messages (one tick = one chunk per worker, then one all-reduce):
- ``state``: the last chunk of a block sends its final state forward at once, before its own
  backward; the next worker uses it one tick later.
- ``carry`` (streams): the last worker sends a batch's final state to worker 0, which receives
  it the tick after (or when the segment drains) and starts batch b + G from it.
No gradient travels back: the chunk after a boundary holds both the boundary's state (its start
state) and the gradient that reached it (delta), and the synthesizer is replicated, so that chunk
regresses the synthesizer on them itself, in the same tick's update. (The paper's picture sends
delta back to the worker that made the prediction; with replicas that is the same sum of
regression terms, without a wait for the next worker's backward.)
- ``target`` (``lookahead=2``, two-step targets): the cut before chunk c waits for the next cut's
  one-step target. When chunk c+1 is the first of the next worker's block, that worker sends the
  target back once it has it (end of its tick); the owner of chunk c receives it before its next
  forward and completes the cut's target then. One idle tick at the end lets the last one land.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field


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
class Receive:
    """At this point of a tick, expect ``kind`` for boundary (batch, chunk) from worker ``src``."""
    src: int
    kind: str      # "state" or "carry"
    batch: int
    chunk: int     # the chunk whose END is the boundary


@dataclass(frozen=True)
class Schedule:
    chunks: int
    workers: int
    batches: int
    first_batch: int = 0
    """batch number of the schedule's first batch (a run resumed from a checkpoint starts later)."""
    stream_groups: int = 0
    deltas: bool = True
    """whether chunks compute the gradient of their start state (DNI mode)."""
    lookahead: int = 1
    """2: two-step targets, which wait for the next cut's target (``target`` messages)."""
    train_every: int = 1
    """``Synthesizer(train_every=m)``: only one cut in m computes its delta and is trained."""
    starts: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.train_every < 1 or (self.train_every > 1 and self.two_step):
            raise ValueError(f"train_every must be >= 1, and 1 with two-step targets; got {self.train_every}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1; got {self.workers}")
        if self.chunks < self.workers or self.chunks % self.workers:
            raise ValueError(f"chunks per sequence ({self.chunks}) must be a positive multiple of "
                             f"workers ({self.workers}): each worker owns a contiguous block of chunks")
        if self.batches < 1:
            raise ValueError(f"batches must be >= 1; got {self.batches}")
        m, k, g = self.block, self.workers, self.stream_groups
        starts: list[int] = []
        for i in range(self.batches):
            s = starts[-1] + m if starts else 0
            if g and i - g >= 0:
                s = max(s, starts[i - g] + k * m)  # batch i - G has left the last worker
            starts.append(s)
        object.__setattr__(self, "starts", tuple(starts))

    @property
    def block(self) -> int:
        return self.chunks // self.workers

    @property
    def ticks(self) -> int:
        return self.starts[-1] + self.workers * self.block + (1 if self.two_step else 0)

    @property
    def two_step(self) -> bool:
        return self.deltas and self.lookahead == 2

    @property
    def last(self) -> int:
        return self.first_batch + self.batches - 1

    def start(self, batch: int) -> int:
        return self.starts[batch - self.first_batch]

    def end(self, batch: int) -> int:
        """Tick at which the last worker runs the batch's last chunk."""
        return self.start(batch) + self.workers * self.block - 1

    def done_by(self, tick: int) -> int:
        """How many of the schedule's batches have left the last worker after ``tick``."""
        return bisect.bisect_right(self.starts, tick - self.workers * self.block + 1)

    def started_by(self, tick: int) -> int:
        """How many of the schedule's batches have started on worker 0 by ``tick`` (inclusive)."""
        return bisect.bisect_right(self.starts, tick)

    def action(self, worker: int, tick: int) -> Action | None:
        j = tick - worker * self.block
        i = bisect.bisect_right(self.starts, j) - 1
        if i < 0 or j - self.starts[i] >= self.block:
            return None
        return Action(tick, worker, self.first_batch + i, worker * self.block + j - self.starts[i])

    def owner(self, chunk: int) -> int:
        return chunk // self.block

    # ---------------------------------------------------------------- what each chunk does
    def sends_state(self, a: Action) -> bool:
        """The chunk's final state goes to the next worker."""
        return a.chunk % self.block == self.block - 1 and a.chunk < self.chunks - 1

    def receives_state(self, a: Action) -> bool:
        return a.chunk % self.block == 0 and a.chunk > 0

    def continues(self, a: Action) -> int | None:
        """The batch whose final state chunk 0 of ``a.batch`` starts from (streams), or None."""
        if a.chunk != 0 or not self.stream_groups or a.batch - self.stream_groups < 0:
            return None
        return a.batch - self.stream_groups

    def needs_delta(self, a: Action) -> bool:
        """The chunk computes the gradient of its start state: the target of the boundary there
        (every chunk but a sequence's first; with streams, that one too when it continues one)."""
        if not (self.deltas and (a.chunk > 0 or self.continues(a) is not None)):
            return False
        return self.train_every == 1 or self.cut_number(a) % self.train_every == 0

    def cut_number(self, a: Action) -> int:
        """The cut at the chunk's start, counted over the run (``train_every`` picks one in m by it):
        without streams a batch has ``chunks - 1`` cuts, with streams ``chunks``."""
        if self.stream_groups:
            return a.batch * self.chunks + a.chunk
        return a.batch * (self.chunks - 1) + a.chunk - 1

    def waits_for_target(self, a: Action) -> bool:
        """Two-step targets: the cut at the chunk's start waits for the next cut's one-step target
        (every cut with a delta but the one before a sequence's last chunk, which nothing follows
        in the batch: its one-step target is final)."""
        return self.two_step and self.needs_delta(a) and a.chunk < self.chunks - 1

    def sends_target(self, a: Action) -> bool:
        """The chunk's one-step target goes back to the previous worker, whose cut waits for it."""
        if a.chunk % self.block or a.chunk == 0:
            return False
        return self.waits_for_target(Action(a.tick - 1, a.worker - 1, a.batch, a.chunk - 1))

    # ---------------------------------------------------------------- receives, per worker and tick
    def receives_before(self, worker: int, tick: int) -> list[Receive]:
        """What ``worker`` receives before its forward at ``tick``."""
        out = []
        a = self.action(worker, tick)
        if a is not None and self.receives_state(a):
            out.append(Receive(worker - 1, "state", a.batch, a.chunk - 1))
        if worker == 0 and self.workers > 1 and self.stream_groups:
            done = self._ended_at(tick - 1)
            if done is not None:
                out.append(Receive(self.workers - 1, "carry", done, self.chunks - 1))
        if self.two_step and worker + 1 < self.workers and tick > 0:  # after the carry: sent after it
            b = self.action(worker + 1, tick - 1)
            if b is not None and self.sends_target(b):
                out.append(Receive(worker + 1, "target", b.batch, b.chunk - 1))
        return out

    def receives_at_drain(self, worker: int) -> list[Receive]:
        """The carry the last tick sent, received after it (the segment ends with none in flight).
        With two-step targets the idle last tick receives it."""
        if worker == 0 and self.workers > 1 and self.stream_groups and not self.two_step:
            return [Receive(self.workers - 1, "carry", self.last, self.chunks - 1)]
        return []

    def _ended_at(self, tick: int) -> int | None:
        i = bisect.bisect_left(self.starts, tick - self.workers * self.block + 1)
        if i < len(self.starts) and self.starts[i] + self.workers * self.block - 1 == tick:
            return self.first_batch + i
        return None

    # ---------------------------------------------------------------- inspection
    def table(self) -> str:
        """The schedule as text: one row per worker, one column per tick."""
        rows = []
        for w in range(self.workers):
            cells = [str(self.action(w, t) or "-") for t in range(self.ticks)]
            rows.append(f"worker {w}: " + " ".join(f"{c:>8}" for c in cells))
        return "\n".join(rows)

    def check(self) -> None:
        """Dry-run the message pattern: every chunk of every batch runs once, in order; every state
        comes from the chunk before it one tick earlier; a batch that continues a stream starts
        after that stream's previous batch ended."""
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
                prev = self.continues(a)
                if prev is not None and prev >= self.first_batch and seen.get((prev, self.chunks - 1), t) >= t:
                    raise AssertionError(f"{a} continues batch {prev} before that batch ended")
                seen[key] = t
                if self.receives_state(a):
                    p = self.action(w - 1, t - 1)
                    if p is None or (p.batch, p.chunk) != (a.batch, a.chunk - 1) or not self.sends_state(p):
                        raise AssertionError(f"{a} expects a state from worker {w - 1} at tick {t - 1}")
                if self.sends_target(a):
                    got = self.receives_before(w - 1, t + 1) if t + 1 < self.ticks else []
                    if Receive(w, "target", a.batch, a.chunk - 1) not in got:
                        raise AssertionError(f"{a} sends a target that worker {w - 1} never receives")
        if len(seen) != self.chunks * self.batches or min(b for b, _ in seen) != self.first_batch:
            raise AssertionError(f"{len(seen)} chunks ran; expected {self.chunks * self.batches}")
