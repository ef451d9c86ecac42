"""What a worker saves and restores: the replica every worker shares, and its own in-flight state.

A checkpoint is taken at a tick's end with the pipeline full (issue 30, goal 2): besides the
model, the optimizers and the synthesizer (:meth:`WorkerState.state_dict`, the same on every
worker), each worker holds what is in flight from it (:meth:`WorkerState.inflight_state`): the
state carried to its next chunk, the streams it continues, the cuts waiting for a two-step target,
the messages it sent that tick, its counters and its RNG. Everything is tensors and plain types,
so a checkpoint loads with ``torch.load(weights_only=True)``.

:class:`dni_dist.engine.worker.Worker` mixes this in; the attributes it reads are the worker's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import targets as tg


@dataclass(frozen=True)
class Send:
    """A message the loop must send: ``kind`` for boundary (batch, chunk) to worker ``dst``."""
    dst: int
    kind: str
    batch: int
    chunk: int
    state: object


@dataclass
class Waiting:
    """A cut whose two-step target waits for the next cut's one-step target (``lookahead=2``)."""
    start: object      # the state at the cut (the chunk's start, a leaf)
    delta: object      # what reached it in the chunk's backward: dL_c/dh + J_c^T g
    one_step: object   # its own one-step target (used if the next cut has none)
    injected: object   # g injected at the chunk's end
    weights: dict      # the weights the chunk ran with, and its inputs: to run it again
    x: torch.Tensor


class WorkerState:
    """``state_dict``/``load_state_dict`` (the replica) and ``inflight_state``/``load_checkpoint``."""

    def state_dict(self) -> dict:
        """Everything a resumed run needs, as tensors and plain types (loads with weights_only=True)."""
        out = {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
               "losses": torch.tensor(self.losses, dtype=torch.float64), "skipped": self.skipped,
               "streams": {int(b): list(tg.as_tuple(s)) for b, s in self.streams.items()},
               # the divergence window: [chunks run, skipped] per tick, on the device until saved
               "recent": torch.stack(list(self._recent)).cpu() if self._recent else torch.zeros(0, 2)}
        if self.synth is not None:
            out["synth"] = self.synth.state_dict()
            out["synth_opt"] = self.synth.optimizer.state_dict()
        out.update(self.trainer.state_dict())  # lr schedule, gradient accumulation (dni_dist.trainer)
        return out

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["opt"])
        self.trainer.load_state_dict(sd)
        if self.synth is not None:
            self.synth.load_state_dict(sd["synth"])
            self.synth.optimizer.load_state_dict(sd["synth_opt"])
        self.losses = [float(v) for v in sd["losses"].tolist()]
        self.skipped = int(sd["skipped"])
        self.streams = {int(b): tg.like([t.to(self.device) for t in parts], self.like)
                        for b, parts in sd["streams"].items()}
        self._recent.clear()
        self._recent.extend(torch.as_tensor(v).to(self.device) for v in sd.get("recent", []))

    @property
    def rank(self) -> int:
        """This worker's place among all workers (its pipeline position, or its data-parallel share)."""
        return self.share[0] if self.share[1] > 1 else self.position

    def inflight_state(self) -> dict:
        """What this worker alone holds at a tick's end, beyond the replica every worker shares
        (:meth:`state_dict`): the state carried to its next chunk, the streams it continues, the
        cuts waiting for a two-step target, what it sent this tick (received next tick), its
        counters and its RNG. Tensors and plain types (loads with weights_only=True)."""
        def parts(state):
            return [] if state is None else [t.detach().cpu() for t in tg.as_tuple(state)]
        return {"carry": parts(self._carry),
                "streams": {int(b): parts(s) for b, s in self.streams.items()},
                "waiting": [{"batch": b, "chunk": c, "start": parts(w.start), "delta": parts(w.delta),
                             "one_step": parts(w.one_step), "injected": parts(w.injected),
                             "weights": {k: v.cpu() for k, v in w.weights.items()}, "x": w.x.cpu()}
                            for (b, c), w in self._waiting.items()],
                "outbox": [{"dst": m.dst, "kind": m.kind, "batch": m.batch, "chunk": m.chunk,
                            "state": parts(m.state)} for m in self.outbox],
                "counters": [self.n_targets, self.n_jtg_passes, self.stream_resets],
                "rng": torch.get_rng_state()}

    def load_checkpoint(self, ckpt: dict) -> None:
        """Load a checkpoint: the shared replica, this worker's in-flight state, and (a checkpoint
        taken mid-run) where in the schedule to go on (:attr:`resumed_at`)."""
        self.load_state_dict(ckpt["worker"])
        inflight = ckpt.get("inflight")
        self.resumed_at = ckpt.get("loop")
        if inflight is None:  # an older checkpoint: taken with the pipeline drained
            return
        if len(inflight) <= self.rank:
            raise ValueError(f"the checkpoint holds {len(inflight)} workers' state; this is worker {self.rank}")
        mine = inflight[self.rank]

        def state(parts):
            return tg.like([t.to(self.device) for t in parts], self.like) if parts else None
        self._carry = state(mine["carry"])
        self.streams = {int(b): state(p) for b, p in mine["streams"].items()}
        self._waiting = {(w["batch"], w["chunk"]): Waiting(
            tg.detach_requires_grad(state(w["start"])), state(w["delta"]), state(w["one_step"]), state(w["injected"]),
            {k: v.to(self.device) for k, v in w["weights"].items()}, w["x"].to(self.device)) for w in mine["waiting"]}
        self.outbox = [Send(m["dst"], m["kind"], m["batch"], m["chunk"], state(m["state"])) for m in mine["outbox"]]
        self.n_targets, self.n_jtg_passes, self.stream_resets = (int(v) for v in mine["counters"])
        torch.set_rng_state(mine["rng"])

