"""The one tick loop every runner runs: a worker, a transport, a schedule.

Written as a generator that yields at the tick's synchronisation points (before receiving, and
with ``sync="exact"`` before finishing the all-reduce). Under torchrun or Ray each
process simply exhausts it (a yield costs nothing); debug mode steps K of them in lockstep over
the in-process transport. One protocol, so every mode computes the same thing.

A tick, for each worker:
  1. receive this tick's start state (and, on worker 0 with streams, a stream's final state);
     forward; send the final state on at once, before its own backward;
  2. backward with the synthetic gradient: the gradient that reaches the start state is the
     target of the boundary there, regressed on here (the synthesizer is replicated);
  3. start the all-reduce of the gradients and accumulate the synthesizer's regression (``exact``:
     the model's part first, summed while the second backward pass of a discounted target and the
     regression are computed);
  4. finish the all-reduce and step (``overlap``: the previous tick's, one step stale; ``exact``:
     the model at once, the synthesizer after the next tick's forward pass, which does not use it).

The whole run is one schedule: a checkpoint is taken at a tick's end with what is in flight (the
messages sent that tick, the sum not yet applied, each worker's carried and waiting states), so
checkpointing never changes what is computed (issue 30, goal 2).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch

from .. import targets as tg
from ..transport.base import Message, Transport
from .schedule import Receive, Schedule  # noqa: F401 - Receive: what _receive takes
from .worker import Worker


def header(kind: str, batch: int, chunk: int, like) -> Message:
    parts = tg.as_tuple(like)
    return Message(kind, batch, chunk, tuple(tuple(t.shape) for t in parts), parts[0].dtype)


def step_rule(workers: int, parallel: str = "pipeline") -> str:
    """The K rule in one line, printed at start: what one optimizer step sees at this K.

    Every optimizer step (the model's and the synthesizer's) sees the mean, over the chunks its
    tick trained, of each chunk's gradient; at K=1 that is one step per chunk on that chunk's
    gradient, so a learning rate means the same at any K (:mod:`.worker` divides the summed buffer)."""
    if parallel == "data":
        if workers == 1:
            return "K=1: one optimizer step per chunk, on that chunk's gradient"
        return (f"K={workers} data-parallel: one optimizer step per chunk, mean of {workers} replicas "
                f"(each 1/{workers} of the batch), as DDP")
    if workers == 1:
        return "K=1: one optimizer step per chunk, on that chunk's gradient"
    return (f"K={workers}: one optimizer step per tick, mean of {workers} chunks (fewer while the pipeline "
            "fills and drains); the synthesizer's too")


@dataclass
class Ready:
    """An all-reduce already finished: its sum (finished early at a checkpoint, or restored from one)."""
    total: torch.Tensor


def _finish(transport: Transport, pending) -> torch.Tensor:
    return pending.total if isinstance(pending, Ready) else transport.finish(pending)


class Timers:
    """Seconds spent per phase of the tick, summed over the run (the scaling benchmark's breakdown)."""
    PHASES = ("compute", "wait_state", "all_reduce", "other")

    def __init__(self):
        self.s = dict.fromkeys(self.PHASES, 0.0)
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.s[phase] += now - self._t
        self._t = now


def run_schedule(worker: Worker, transport: Transport, sched: Schedule, sync: str, faults=None, on_tick=None,
                 timers: Timers | None = None, checkpoint_at=None, on_checkpoint=None, start_tick: int = 0,
                 pending: torch.Tensor | None = None, stop=None) -> Iterator[None]:
    """Run ``sched`` from tick ``start_tick`` to its end, the pipeline drained at the end only.

    ``on_tick(tick)`` runs after each step. Where ``checkpoint_at(tick)`` is true, every worker
    meets at the tick's end (a yield: in debug mode the others have finished the tick too), the
    all-reduce in flight is finished early (the same sum it would give a tick later) and
    ``on_checkpoint(tick, total)`` saves; nothing drains. A run resumed from such a checkpoint
    starts at ``start_tick`` (the next tick) with that sum as ``pending`` and the worker's
    in-flight state loaded (:meth:`Worker.load_inflight`); it first sends again what the
    worker had sent in the checkpointed tick (the messages in flight then).

    ``stop`` (early stopping, :class:`dni_dist.runners.early_stop.EarlyStop`): where
    ``stop.due(sched, tick)``, every worker meets at the tick's end as at a checkpoint and
    ``stop.cut(sched, tick)`` says whether the run stops; on a stop the rest of the run follows the
    cut schedule (the batches in flight finish, none starts) and takes no more mid-run checkpoints.
    """
    pos = worker.position
    tm = timers or Timers()
    if start_tick == 0:
        worker.begin(sched)
    else:
        worker.schedule = sched
        worker._tick = start_tick - 1  # forward counts ticks from here (the synthesizer's clock asks the schedule)
        _send(worker, transport, worker.take_outbox())
    pending = None if pending is None else Ready(pending)  # overlap: the all-reduce started last tick;
    t, cut = start_tick - 1, False                         # exact: its synthesizer part
    while t + 1 < sched.ticks:
        t += 1
        a = sched.action(pos, t)
        yield
        tm.lap("other")
        worker.take_outbox()  # what the previous tick sent has been received
        _receive(worker, transport, sched.receives_before(pos, t))
        tm.lap("wait_state")
        poison = faults.before_chunk(pos, a, sched) if faults is not None and a is not None else False
        _send(worker, transport, worker.forward(a, poison))
        if sync == "exact":
            if pending is not None:  # the synthesizer is first used by this backward: step it now
                tm.lap("compute")
                total = _finish(transport, pending)
                tm.lap("all_reduce")
                worker.apply_synth(total)
            worker.backward()
            # Two all-reduces: the model's part is summed while the synthesizer's regression is
            # computed, and the synthesizer's part while the next tick runs its forward pass (the
            # same sums and the same steps, in the same order of use, as one buffer at the tick's end).
            model_part = transport.start_all_reduce(worker.model_grads())
            synth_part = worker.synth_grads()
            _send(worker, transport, worker.take_sends())  # two-step targets going back
            tm.lap("compute")
            yield
            tm.lap("other")
            total = transport.finish(model_part)
            tm.lap("all_reduce")
            pending = transport.start_all_reduce(synth_part)  # after the model's: never competes with it
            worker.apply_model(total)
        else:
            worker.backward()
            buf = worker.grad_buffer()
            _send(worker, transport, worker.take_sends())
            tm.lap("compute")
            if pending is not None:
                total = _finish(transport, pending)
                tm.lap("all_reduce")
                worker.apply(total)
            pending = transport.start_all_reduce(buf)
        tm.lap("compute")
        if on_tick is not None:
            on_tick(t)
        checkpoint = checkpoint_at is not None and not cut and checkpoint_at(t)
        evaluated = stop is not None and stop.due(sched, t)
        if checkpoint or evaluated:
            yield  # every worker at the tick's end
            tm.lap("other")
            if pending is not None:
                pending = Ready(transport.finish(pending))
            tm.lap("all_reduce")
            if checkpoint:
                on_checkpoint(t, None if pending is None else pending.total)
            short = stop.cut(sched, t) if evaluated else None
            if short is not None:  # early stop: the batches in flight finish, none starts
                sched = worker.schedule = short
                cut = True
        tm.lap("other")
    yield
    if pending is not None:  # drain at the end of the run
        total = _finish(transport, pending)
        worker.apply_synth(total) if sync == "exact" else worker.apply(total)
    worker.take_outbox()
    _receive(worker, transport, sched.receives_at_drain(pos))


def _receive(worker: Worker, transport: Transport, receives: list[Receive]) -> None:
    for r in receives:
        parts = transport.recv(r.src, header(r.kind, r.batch, r.chunk, worker.like))
        worker.receive(r.kind, r.batch, r.chunk, tg.like(parts, worker.like))


def _send(worker: Worker, transport: Transport, sends) -> None:
    for s in sends:
        worker.outbox.append(s)  # in flight until the next tick: a checkpoint at this tick's end holds it
        transport.send(s.dst, header(s.kind, s.batch, s.chunk, s.state), list(tg.as_tuple(s.state)))
