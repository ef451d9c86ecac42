"""A worker: one replica of the model that runs its chunks of the schedule.

It never calls torch.distributed or Ray. A runner feeds it what arrived, sends what it returns,
and reduces its gradient buffer with the other workers' (all-reduce, or a sum in debug mode).
Per tick: ``forward`` (returns the state to send on at once), ``backward`` (returns delta to
send back), ``absorb`` (deltas that arrived), ``grad_buffer`` -> reduce -> ``apply``.
"""
from __future__ import annotations

import os
import signal

import torch

from .. import targets as tg
from ..chunk import ChunkGraph, chunk_backward, chunk_forward
from ..config import Config
from ..model import SeqModel
from ..synthesizer import Synthesizer
from ..tasks import copy_batch, delayed_recall_batch, pad_to_multiple
from .schedule import Action, Schedule

EXTRA = 4  # scalars appended to the gradient buffer: targets, target square sum, loss sum, chunks run


class WorkerFailure(RuntimeError):
    """Raised on purpose by the ``fail_at`` testing aid."""


def make_batch(cfg: Config, batch: int):
    """Batch ``batch`` of the task, the same on every worker (seeded by (seed, batch))."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + batch)
    if cfg.task == "recall":
        return delayed_recall_batch(cfg.batch, cfg.length, cfg.delay, gen)
    x, y, m = copy_batch(cfg.batch, cfg.copy_len, gen)
    return pad_to_multiple(x, y, m, cfg.length)


def build(cfg: Config, device: torch.device | str = "cpu"):
    """Model, synthesizer and optimizer, identical on every worker for a given seed."""
    torch.manual_seed(cfg.seed)
    if cfg.task == "recall":
        model = SeqModel(1, cfg.hidden, 1, num_layers=cfg.layers)
    else:
        model = SeqModel(9, cfg.hidden, 8, num_layers=cfg.layers)
    model.to(device)
    synth = Synthesizer.for_rnn(model.rnn, lr=cfg.synth_lr, factor=cfg.factor, discount=cfg.discount).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return model, synth, opt


class Worker:
    def __init__(self, cfg: Config, rank: int, schedule: Schedule | None = None):
        self.cfg, self.rank, self.schedule = cfg, rank, schedule
        self.device = torch.device(cfg.device)
        # data-parallel baseline: this worker's rows of every batch; the pipeline uses all rows
        self.data_parallel = cfg.parallel == "data"
        self.local_batch = cfg.batch // cfg.workers if self.data_parallel else cfg.batch
        self.rows = slice(rank * self.local_batch, (rank + 1) * self.local_batch) if self.data_parallel else slice(None)
        self.model, self.synth, self.opt = build(cfg, self.device)
        self.params = list(self.model.parameters())
        self.sparams = list(self.synth.parameters())
        self._batch_cache: dict[int, tuple] = {}
        self._graph: ChunkGraph | None = None
        self._carry = None             # state handed from this worker's previous chunk
        self._boundaries: dict = {}    # (batch, chunk) -> state at the end of that chunk
        self._targets: list = []       # (boundary state, target) collected this tick
        self._loss = 0.0
        self._ran = 0
        self.losses: list[float] = []  # mean chunk loss of every optimizer step (tick)
        self.skipped = 0               # chunks with a non-finite loss

    def begin(self, schedule: Schedule) -> None:
        """Start a segment (the pipeline is empty between segments: nothing is in flight)."""
        self.schedule = schedule
        self._boundaries.clear()  # left only by chunks skipped for a non-finite loss

    # ---------------------------------------------------------------- data
    def _chunk_data(self, a: Action):
        if a.batch not in self._batch_cache:
            self._batch_cache = {k: v for k, v in self._batch_cache.items() if k >= a.batch - 1}
            self._batch_cache[a.batch] = tuple(t.to(self.device) for t in make_batch(self.cfg, a.batch))
        x, y, m = self._batch_cache[a.batch]
        sl = slice(a.chunk * self.cfg.truncation, (a.chunk + 1) * self.cfg.truncation)
        return x[self.rows, sl], y[self.rows, sl], m[self.rows, sl]

    def state_like(self):
        """Shapes of a boundary state (for pre-allocated receive buffers)."""
        return self.model.initial_state(self.local_batch, device=self.device)

    # ---------------------------------------------------------------- one tick
    def forward(self, a: Action | None, received=None):
        """Run the chunk's forward pass. Returns the final state to send on, or None."""
        self.opt.zero_grad(set_to_none=False)
        self.synth.optimizer.zero_grad(set_to_none=False)
        self._loss, self._ran, self._targets = 0.0, 0, []
        if a is None:
            self._graph = None
            return None
        poison = self._maybe_fail(a)
        if a.chunk == 0:
            start = self.model.initial_state(self.local_batch, device=self.device)
        elif self.schedule.receives_state(a):
            if received is None:
                raise RuntimeError(f"worker {self.rank}: {a} needs the state from worker {self.rank - 1}")
            start = received
        else:
            start = self._carry
        x, y, m = self._chunk_data(a)
        if poison:
            x = x * float("nan")
        self._graph = chunk_forward(self.model, start, x, y, m, need_delta=(self.cfg.mode == "dni" and a.chunk > 0))
        if self.schedule.sends_state(a):
            return tg.detach(self._graph.end)
        return None

    def backward(self, a: Action | None):
        """Back-propagate the chunk (with its synthetic gradient). Returns delta to send back, or None."""
        if a is None:
            return None
        dni = self.cfg.mode == "dni"
        last = a.chunk == self.schedule.chunks - 1
        res = chunk_backward(self._graph, self.synth, inject=dni and not last)
        self._graph = None
        self._carry = res.state_end
        if res.skipped:
            self.skipped += 1
            if self.schedule.sends_delta(a) and dni:  # keep the protocol in step: a target that
                parts = tg.as_tuple(self._carry)      # the receiver drops (and counts) as non-finite
                return tg.like([torch.full_like(t, float("nan")) for t in parts], self._carry)
        else:
            self._loss, self._ran = res.loss, 1
        if dni and not last:
            self._boundaries[(a.batch, a.chunk)] = res.state_end
        if res.delta is None:
            return None
        if self.schedule.sends_delta(a):
            return res.delta
        self.absorb(a.batch, a.chunk - 1, res.delta)
        return None

    def absorb(self, batch: int, chunk: int, delta) -> None:
        """A target arrived for the prediction this worker made after chunk ``chunk`` of ``batch``."""
        boundary = self._boundaries.pop((batch, chunk), None)
        if boundary is None:
            raise RuntimeError(f"worker {self.rank}: got a delta for boundary (batch {batch}, chunk {chunk}) "
                               "it holds no prediction for")
        self._targets.append((boundary, delta))

    def grad_buffer(self) -> torch.Tensor:
        """Model and synthesizer gradients of this tick plus four scalars, flattened, to be summed."""
        n, sq = 0, 0.0
        if self._targets:
            bounds, tars = zip(*self._targets)
            n, sq = self.synth.accumulate(list(bounds), list(tars))
        parts = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                 for p in self.params + self.sparams]
        parts.append(torch.tensor([float(n), sq, self._loss, float(self._ran)], device=self.device))
        return torch.cat(parts)

    def apply(self, total: torch.Tensor) -> None:
        """Take the summed buffer: step the model and the synthesizer identically on every worker."""
        if self.data_parallel:  # workers hold slices of one batch: average, as DDP does
            total = total / self.cfg.workers
        offset = 0
        for p in self.params + self.sparams:
            k = p.numel()
            p.grad = total[offset:offset + k].view_as(p).clone()
            offset += k
        n, sq, loss, ran = total[offset:offset + EXTRA].tolist()
        if ran > 0:
            if self.cfg.clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip)
            self.opt.step()
            self.losses.append(loss / ran)
        if n > 0:
            if self.synth.scale_ready():
                self.synth.apply_update()
            self.synth.observe_targets(sq / n)
        self.synth.optimizer.zero_grad(set_to_none=True)

    def _maybe_fail(self, a: Action) -> bool:
        """The ``fail_at`` testing aid; returns True when the chunk's inputs should be NaN."""
        cfg = self.cfg
        if a.batch != cfg.fail_at or self.rank != cfg.fail_rank or a.chunk != self.rank * self.schedule.block:
            return False
        if cfg.checkpoint_dir:
            marker = os.path.join(cfg.checkpoint_dir, f"failed-once-rank{self.rank}")
            if os.path.exists(marker):
                return False
            os.makedirs(cfg.checkpoint_dir, exist_ok=True)
            open(marker, "w").close()
        if cfg.fail_mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if cfg.fail_mode == "raise":
            raise WorkerFailure(f"worker {self.rank}: failing on purpose at batch {a.batch} (fail_at)")
        return True

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "synth": self.synth.state_dict(),
                "opt": self.opt.state_dict(), "synth_opt": self.synth.optimizer.state_dict(),
                "losses": list(self.losses), "skipped": self.skipped}

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd["model"])
        self.synth.load_state_dict(sd["synth"])
        self.opt.load_state_dict(sd["opt"])
        self.synth.optimizer.load_state_dict(sd["synth_opt"])
        self.losses = list(sd["losses"])
        self.skipped = sd["skipped"]

