"""A worker: one replica of the user's model that runs its chunks of the schedule.

It never calls torch.distributed or Ray, and knows no task, model class or configuration: the
model and data come from a :class:`dni_dist.Spec`, the rest from its :class:`.settings.WorkerSettings`. The tick loop (:mod:`dni_dist.engine.loop`) feeds it what arrived,
sends what it returns, and reduces its gradient buffer with the other workers'. Per tick:
``receive`` (what arrived), ``forward`` (returns the states to send on), ``backward``,
``grad_buffer`` -> all-reduce -> ``apply`` (or, with ``sync="exact"``, the buffer's two parts
reduced and applied apart: ``model_grads``/``apply_model`` and ``synth_grads``/``apply_synth``).

The gradient buffer the all-reduce sums, and the K rule's division of a sum, are
:mod:`.grad_buffer`; what a checkpoint saves and restores is :mod:`.worker_state`.

The K rule (what an optimizer step sees at any K; docs/tuning.md, "Workers"): every optimizer
step, the model's and the synthesizer's, sees the MEAN over the chunks the tick trained of each
chunk's gradient, where one chunk's gradient is exactly what one step takes at K=1 (one step per
chunk). A tick of K pipeline workers runs up to K chunks of different positions in the sequence;
the sum the all-reduce returns is divided by the number that ran (the model) and the number that
regressed the synthesizer (the synthesizer), so a learning rate means the same at K=1 and K=8, as
data parallelism averages over replicas (which, holding 1/K of a batch each, follow the same rule).
"""
from __future__ import annotations

import collections

import torch

from .. import targets as tg
from ..chunk import ChunkGraph, chunk_backward, chunk_forward, chunk_target
from ..optim import adam
from ..post import Post
from ..spec import Spec, split_batch
from ..synthesizer import Synthesizer
from ..trainer import Trainer
from .grad_buffer import GradBuffer
from .schedule import Action, Schedule
from .settings import WorkerSettings
from .worker_state import Send, WorkerState
from .worker_state import Waiting as _Waiting

DIVERGENCE_CHECK_EVERY = 16  # ticks between two reads of the divergence window (the window if shorter)


class DivergenceError(RuntimeError):
    """Too many chunks in a recent window had a non-finite loss or gradient."""


def _finite(flat: torch.Tensor) -> torch.Tensor:
    """No NaN or Inf in ``flat`` (a device bool; ``targets.finite``)."""
    return tg.finite(flat)


class Worker(WorkerState):
    """One replica. ``position`` is its place in the pipeline (0 for a data-parallel replica,
    whose ``rows`` select its share of every batch)."""

    def __init__(self, spec: Spec, settings: WorkerSettings, position: int, share: tuple[int, int] = (0, 1)):
        self.spec, self.settings, self.position, self.share = spec, settings, position, share
        self.batch_size = 0  # sequences per batch (all replicas together), known from the first batch
        self.device = torch.device(settings.device)
        self.dni = settings.mode == "dni"
        torch.manual_seed(settings.seed)
        self.model = spec.model().to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = spec.optimizer(self.params) if spec.optimizer else adam(self.params, settings.lr)
        self._batch_cache: dict[int, tuple] = {}
        self.like = self._probe_state()
        opts = settings.synth  # resolved above the worker (run_plan): the runner's schedule is built from them too
        self.synth = Synthesizer.for_state(self.like, **opts) if opts is not None else None
        self.sparams = list(self.synth.parameters()) if self.synth is not None else []
        dtype = self.params[0].dtype if self.params else torch.float32
        self.grads = GradBuffer(self.params, self.sparams, dtype, self.device)  # what the all-reduce sums
        self.schedule: Schedule | None = None
        self._graph: ChunkGraph | None = None
        self._action: Action | None = None
        self._carry = None             # state handed from this worker's previous chunk
        self._received: dict = {}      # (kind, batch, chunk) -> state that arrived for a coming chunk
        self._targets: list = []       # (boundary state, ChunkResult, rerun) whose target is regressed on this tick
        self._rerun = None             # lookahead=2: (weights, inputs) of this tick's chunk, if its cut will wait
        self._waiting: dict = {}       # (batch, chunk) -> _Waiting: cuts waiting for the next cut's target
        self._arrived: list = []       # ((batch, chunk), target) that arrived this tick for waiting cuts
        self._sends: list = []         # targets to send back at the end of this tick
        self.outbox: list = []         # what the loop sent this tick (in flight until the next: checkpoints hold it)
        self.resumed_at: dict | None = None  # loaded from a checkpoint taken mid-run: {first_batch, tick, pending}
        self.streams: dict = {}        # batch -> its final state (worker 0: streams to continue)
        self._loss, self._ran, self._skipped = 0.0, 0, 0
        # Nothing of a tick is read back to the host (on a GPU a read waits for the GPU): the step
        # losses, the skipped count and the divergence window stay on the device until read.
        self._losses: list[float] = []  # mean chunk loss of every optimizer step, read so far
        self._loss_queue: list = []     # [loss sum, chunks run, stepped] per tick, not read yet
        self._skipped_base, self._skipped_dev = 0, torch.zeros((), dtype=torch.float64, device=self.device)
        self._ticks, self._batch_seen = 0, 0
        self.stream_resets = 0         # stream states dropped for being non-finite
        self.n_targets = 0             # boundary targets this worker regressed on,
        self.n_jtg_passes = 0          # and those that took the discounted target's J^T g pass (work done)
        self.timers = None             # engine.loop.Timers: seconds per tick phase (set by the runner)
        self._recent = collections.deque(maxlen=settings.divergence_window)  # [chunks run, skipped] per tick (device)
        self._divergence = Post()  # the window's sums on their way to the host
        self.trainer = Trainer(settings, spec, self)  # lr schedule, precision, grad accumulation (dni_dist.trainer)
        self._model_fn, self._loss_fn = self.trainer.forward_fns(self.model, spec.loss)

    @property
    def losses(self) -> list[float]:
        """Mean chunk loss of every optimizer step (tick): read from the device when asked."""
        if self._loss_queue:  # one read for every tick since the last
            for loss, ran, stepped in torch.stack(self._loss_queue).tolist():
                if stepped:
                    self._losses.append(loss / ran)
            self._loss_queue = []
        return self._losses

    @losses.setter
    def losses(self, values) -> None:
        self._losses, self._loss_queue = list(values), []

    @property
    def skipped(self) -> int:
        """Chunks with a non-finite loss or gradient, over all workers (read when asked)."""
        return self._skipped_base + int(self._skipped_dev)

    @skipped.setter
    def skipped(self, value: int) -> None:
        self._skipped_base, self._skipped_dev = int(value), torch.zeros_like(self._skipped_dev)

    def _probe_state(self):
        """The form of a boundary state (for receive buffers and sizing the synthesizer), from one
        forward of the first chunk under no_grad; the RNG and the model's mode are restored."""
        x, _, _ = self._chunk_data(0, 0)
        rng = torch.get_rng_state()
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                got = self.model(x, None)
        finally:
            self.model.train(training)
            torch.set_rng_state(rng)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise TypeError("the spec's model must return (out, state) from forward(x, state); got "
                            f"{type(got).__name__}")
        state = got[1]
        parts = tg.as_tuple(state)
        if not parts or not all(torch.is_tensor(t) and t.is_floating_point() for t in parts):
            raise TypeError("the spec's model returned a state that is not a tensor or a tuple of floating-point "
                            "tensors (as nn.LSTM's (h, c) or nn.GRU's h)")
        return tg.like([torch.zeros_like(t) for t in parts], state)

    def begin(self, schedule: Schedule) -> None:
        """Start a segment (the pipeline is empty between segments: nothing is in flight)."""
        self.schedule = schedule
        self._tick = -1  # this segment's tick (forward runs once a tick, idle or not)
        self._received.clear()
        self._waiting.clear()  # none left: a segment ends with an idle tick that completes the last

    # ---------------------------------------------------------------- data
    def _chunk_data(self, batch: int, chunk: int):
        if batch not in self._batch_cache:
            self._batch_cache = {k: v for k, v in self._batch_cache.items() if k >= batch - 1}
            x, y, m = split_batch(self.spec, batch, self.settings.length)
            self.batch_size = x.shape[0]
            index, count = self.share
            if x.shape[0] % count:
                raise ValueError(f"parallel='data' splits every batch over {count} workers, but batch {batch} has "
                                 f"{x.shape[0]} sequences (not a multiple of {count})")
            per = x.shape[0] // count
            rows = slice(index * per, (index + 1) * per)
            self._batch_cache[batch] = tuple(None if t is None else t[rows].to(self.device) for t in (x, y, m))
        x, y, m = self._batch_cache[batch]
        sl = slice(chunk * self.settings.truncation, (chunk + 1) * self.settings.truncation)
        return x[:, sl], y[:, sl], None if m is None else m[:, sl]

    # ---------------------------------------------------------------- one tick
    def idle(self) -> None:
        """Clear this tick's gradients and targets (also the start of every tick)."""
        self.grads.start_tick()
        self._loss, self._ran, self._skipped, self._targets = 0.0, 0, 0, []
        self._rerun = None

    def forward(self, a: Action | None, poison: bool = False) -> list[Send]:
        """Run the chunk's forward pass; returns the states to send on at once."""
        self._tick += 1
        self.idle()
        self._action, self._graph = a, None
        if a is None:
            return []
        s = self.schedule
        if s.receives_state(a):
            start = self._received.pop(("state", a.batch, a.chunk - 1))
        elif a.chunk == 0:
            prev = s.continues(a)
            start = None if prev is None else self.streams.pop(prev, None)
            if start is not None and not tg.all_finite(start):
                start, self.stream_resets = None, self.stream_resets + 1
        else:
            start = self._carry
        self._batch_seen = a.batch
        x, y, m = self._chunk_data(a.batch, a.chunk)
        if poison:
            x = x * float("nan")
        self._graph = chunk_forward(self._model_fn, self._loss_fn, start, x, y, m,
                                    need_delta=s.needs_delta(a) and start is not None)
        if s.waits_for_target(a) and start is not None:  # copied before this tick's step changes them
            self._rerun = (tg.snapshot(self.model), x)
        out = []
        if s.sends_state(a):
            out.append(Send(self.position + 1, "state", a.batch, a.chunk, tg.detach(self._graph.end)))
        if s.stream_groups and a.chunk == s.chunks - 1:
            end = tg.detach(self._graph.end)
            if s.workers > 1:
                out.append(Send(0, "carry", a.batch, a.chunk, end))
            else:
                self.streams[a.batch] = end
        return out

    def backward(self) -> None:
        """Back-propagate this tick's chunk (with its synthetic gradient) and keep the target of
        the boundary at its start: ``(start state, delta)``.

        The synthesizer is replicated, so whoever holds a boundary's state and its delta can
        compute the regression there: the chunk *after* a boundary holds both (its start state
        arrived with the state message, and the delta is its own). No gradient travels back, and
        the sum over workers in the all-reduce is the same sum of regression terms.
        """
        a, s = self._action, self.schedule
        if self.synth is not None and any(s.action(w, self._tick) for w in range(s.workers)):
            self.synth.tick()  # every worker, idle or not, at every tick where one runs: the replicas read together
        if a is None:
            return
        streaming_end = bool(s.stream_groups) and a.chunk == s.chunks - 1
        inject = self.dni and (a.chunk < s.chunks - 1 or streaming_end)
        graph, self._graph = self._graph, None
        res = chunk_backward(graph, self.synth, inject=inject, on_device=True)
        self._carry = res.state_end
        # A non-finite loss: its gradients are left out of this worker's buffer (as if it never ran;
        # the buffer holds this chunk alone before the sum), and its NaN target is masked out by the
        # synthesizer. Decided on the device: nothing is read.
        self.grads.drop_model(res.skipped)
        self._loss = torch.where(res.skipped, 0.0, res.loss)
        self._ran, self._skipped = ~res.skipped, res.skipped
        if res.delta is not None:
            self._targets.append((graph.start, res, self._rerun))  # its J^T g pass (if any) runs in synth_grads

    def receive(self, kind: str, batch: int, chunk: int, state) -> None:
        """A message arrived: a start state for a coming chunk, a stream's final state, or (two-step
        targets) the next cut's target for a waiting cut."""
        if kind == "carry":
            self.streams[batch] = state
        elif kind == "target":
            self._arrived.append(((batch, chunk), state))
        else:
            self._received[(kind, batch, chunk)] = state

    def model_grads(self) -> torch.Tensor:
        """The model's part of this tick's buffer (its gradients and the tick's scalars), final once
        :meth:`backward` ran: with ``sync="exact"`` its all-reduce starts here and runs while the
        synthesizer's regression (:meth:`synth_grads`) is computed."""
        return self.grads.model_part(self._loss, self._ran, self._skipped)

    def synth_grads(self) -> torch.Tensor:
        """The synthesizer's part of this tick's buffer: its regression gradients and evidence.
        Hands the buffer out: the next tick writes the other one."""
        bounds, targets = self._regression_targets()
        return self.grads.synth_part(self.synth.accumulate(bounds, targets) if bounds else None)

    def _regression_targets(self) -> tuple[list, list]:
        """The (cut, target) pairs regressed on this tick. One-step: the cut at this chunk's
        start. Two-step (``lookahead=2``): a cut waits for the next cut's one-step target, which
        this worker computes (the next chunk ran here) or receives (it ran on the next worker);
        then its target is completed by running its chunk again with the weights it ran with."""
        bounds, targets = [], []
        for key, got in self._arrived:
            w = self._waiting.pop(key, None)
            if w is not None:  # None: that chunk was skipped or started a stream afresh, and has no cut
                bounds.append(w.start)
                targets.append(self._two_step(w, got))
        self._arrived = []
        a, s = self._action, self.schedule
        for start, res, rerun in self._targets:
            if not self.synth.keep_cut(a.batch * s.chunks + a.chunk - 1):  # the cut's place in the data
                continue  # the gate reads shut: one cut in shut_train_every is trained
            self.n_targets += 1
            self.n_jtg_passes += res.vjp is not None
            one = chunk_target(res)
            prev = self._waiting.pop((a.batch, a.chunk - 1), None)
            if prev is not None:
                bounds.append(prev.start)
                targets.append(self._two_step(prev, one))
            if s.sends_target(a):
                self._sends.append(Send(self.position - 1, "target", a.batch, a.chunk - 1, one))
            if rerun is not None:
                self._waiting[(a.batch, a.chunk)] = _Waiting(start, res.delta, one, res.injected, *rerun)
            else:
                bounds.append(start)
                targets.append(one)
        if a is not None and s.two_step and not self._targets:  # no target from this chunk (skipped)
            prev = self._waiting.pop((a.batch, a.chunk - 1), None)
            if prev is not None:  # its cut keeps its one-step target
                bounds.append(prev.start)
                targets.append(prev.one_step)
            if s.sends_target(a):  # the previous worker waits for it: a NaN target says "none"
                self._sends.append(Send(self.position - 1, "target", a.batch, a.chunk - 1,
                                        tg.like([torch.full_like(t, float("nan")) for t in tg.as_tuple(self.like)],
                                                self.like)))
        return bounds, targets

    def _two_step(self, w: _Waiting, next_target) -> object:
        """A NaN next target says "none" (that chunk was skipped): then the one-step target (on the device)."""
        two = tg.two_step_target(w.delta, w.injected, next_target,
                                 lambda cot: tg.chunk_vjp(self.model, w.weights, w.x, w.start, cot),
                                 self.synth.discount, self.synth.lookahead_weight)
        finite = torch.stack([torch.isfinite(t).all() for t in tg.as_tuple(next_target)]).all()
        return tg.like([torch.where(finite, t, o) for t, o in zip(tg.as_tuple(two), tg.as_tuple(w.one_step))], two)

    def take_outbox(self) -> list[Send]:
        """What was sent this tick (the loop records it), and a fresh outbox."""
        out, self.outbox = self.outbox, []
        return out

    def take_sends(self) -> list[Send]:
        """The targets to send back now (``lookahead=2``); empty otherwise."""
        out, self._sends = self._sends, []
        return out

    def grad_buffer(self) -> torch.Tensor:
        """This tick's whole buffer, to be summed over workers and passed to :meth:`apply`."""
        self.model_grads()
        self.synth_grads()
        return self.grads.handed_out()

    def apply(self, total: torch.Tensor) -> None:
        """Take the summed buffer: step the model and the synthesizer identically on every worker."""
        self.apply_model(total[:self.grads.split])
        self.apply_synth(total[self.grads.split:])

    def apply_model(self, total: torch.Tensor) -> None:
        """Step the model on its summed part of the buffer (gradients and scalars)."""
        grads, loss, ran, skipped = self.grads.model_step(total)  # the K rule: the mean over the chunks that ran
        step = (ran > 0) & _finite(grads)
        skipped = torch.where(step, skipped, skipped + ran)  # a finite loss with a non-finite gradient: no step
        ran = torch.where(step, ran, 0.0)
        self.trainer.step(grads, step)  # clip, step, schedule; every grad_accum ticks (dni_dist.trainer)
        self._loss_queue.append(torch.stack([loss, ran, step.to(loss.dtype)]))
        self._skipped_dev += skipped
        self._check_divergence(ran, skipped)

    def apply_synth(self, total: torch.Tensor) -> None:
        """Step the synthesizer on its summed part of the buffer. Leaves its ``.grad`` bound to the
        buffer being written now, so a regression after this (``sync="exact"`` applies the previous
        tick's sum between this tick's forward and backward) accumulates in the right place."""
        if self.synth is None:
            return
        evidence = self.grads.synth_step(total)  # the K rule: the mean over the chunks that regressed it
        self.synth.finish_update(evidence)  # on the device: no copy to the host
        self.grads.rebind_synth()

    def _check_divergence(self, ran: torch.Tensor, skipped: torch.Tensor) -> None:
        """Raise when more than the threshold of the chunks in the window were skipped. Checked once
        every DIVERGENCE_CHECK_EVERY ticks (the window's length if shorter), on the window's sums
        as posted at the tick before (``dni_dist/post.py``): no tick waits for the device."""
        self._recent.append(torch.stack([ran, skipped]))
        self._ticks += 1
        every = min(DIVERGENCE_CHECK_EVERY, self._recent.maxlen)
        check = len(self._recent) == self._recent.maxlen and self._ticks % every == 0
        if check:
            ran_sum, bad = self._divergence.take(lambda: torch.stack(list(self._recent)).sum(0))
        if (self._ticks + 1) % every == 0:
            self._divergence.send(torch.stack(list(self._recent)).sum(0))
        if not check:
            return
        total = ran_sum + bad
        if total and bad / total > self.settings.divergence_threshold:
            raise DivergenceError(
                f"training diverged at batch {self._batch_seen}: {bad} of the last {total} chunks had a non-finite "
                f"loss or gradient (more than {self.settings.divergence_threshold:.0%}); lower --lr, set --clip, or "
                "check the data")
