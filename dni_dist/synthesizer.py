"""The synthesizer and the seed API: three added lines in a truncated-BPTT loop.

    synth = dni_dist.Synthesizer()                # sizes taken from the first state
    ...
        hn = synth.backward_synthetic(hn, loss)   # before loss.backward()
        loss.backward()
    synth.step()                                  # after the sequence (or window)

Everything an update computes stays on the state's device: the gate, the running scale, the
non-finite guards and the statistics are tensors, so a step on a GPU never waits for the GPU to
finish (no host-device synchronisation). Two reads remain, both bounded: the gate is read once
every ``gate_check_every`` injections (to skip the prediction and the ``J^T g`` pass while it is
shut; never with 0, which pays for them at every chunk instead), and ``synth.stats`` is read when
someone asks for it.

References:
    Jaderberg et al. 2017, "Decoupled Neural Interfaces using Synthetic Gradients", arXiv 1608.05343.
    van Hasselt et al. 2016, "Learning values across many orders of magnitude", arXiv 1602.07714 (normalize).
"""
from __future__ import annotations

import torch
from torch import nn

from . import optim, regression
from . import targets as tg
from .seed_api import SeedAPI
from .state_form import check_form, infer_form
from .synth_options import OPTION_NAMES, SynthOptions, check_everyday, check_together, merge_options
from .synth_stats import NONFINITE_PREDICTIONS, NONFINITE_TARGETS, SKIPPED_UPDATES, UPDATES, SynthStats
from .targets import State


class Synthesizer(SeedAPI, nn.Module):
    """Predicts ``dL_future / d state`` at a truncation boundary and trains itself by bootstrapping.

    Args:
        size, is_lstm, num_layers: the RNN state's hidden size, whether it is an LSTM's ``(h, c)``
            and its layers (all predicted jointly). None: taken from the first state (``nn.LazyLinear``).
        lr: learning rate of the synthesizer (in normalized target units).
        factor: scale of the injected synthetic gradient (lambda). 1 = full scale.
        discount: gamma of the bootstrap, ``target = dL_c/dh + gamma * J^T g``. 1 is the paper's.
        lookahead: 1 (default) regresses each cut on the one-step bootstrapped target. 2: on two
            chunks of true gradient (docs/math.md, "Two cuts with two-step targets"); pass
            ``model=`` and ``inputs=`` to :meth:`backward_synthetic` (the engine does it itself).
        gate: scale the injection by ``clamp(tolerance * <p, d> / <p, p>, 0, 1)`` over recent
            targets, so a synthesizer that predicts noise, or points the wrong way, injects
            nothing (issue 12; docs/math.md). False: ``factor`` always.
        options: the research options, a :class:`SynthOptions`; its fields may also be given as
            keywords (a misspelled one is an error naming the valid ones).
    """

    def __init__(self, size: int | None = None, is_lstm: bool | None = None, num_layers: int | None = None, *,
                 lr: float = 3e-3, factor: float = 1.0, discount: float = 0.5, lookahead: int = 1,
                 gate: bool = True, options: SynthOptions | None = None, **more):
        super().__init__()
        opts = merge_options(options, more)
        check_everyday(size, is_lstm, num_layers, lr, factor, discount, lookahead, gate)
        check_together(opts, lookahead)
        self.options = opts
        for name in OPTION_NAMES:  # plain attributes, read by the engine and the benchmarks
            setattr(self, "optimizer_cls" if name == "optimizer" else name, getattr(opts, name))
        self.size, self.is_lstm, self.num_layers = size, is_lstm, num_layers
        self.lr, self.factor, self.discount = float(lr), float(factor), float(discount)
        self.lookahead, self.gate = lookahead, gate
        # running mean square of targets; 0 until the first target (a buffer: checkpointed)
        self.register_buffer("target_ms", torch.zeros(()))
        # running means of <p, d>, <p, p>, <d, d> per element, in output units (the gate's evidence)
        self.register_buffer("fit", torch.zeros(3))
        if self.gate_warmup:  # updates of evidence so far
            self.register_buffer("fit_count", torch.zeros(()))
        # the host's gate clock, [ticks so far, open at the last read, warmed up at the last read]: saved with the state
        # (written at save time from the host, read back once after a load) so a resumed run reads
        # the gate at the same injections as an uninterrupted one
        self.register_buffer("gate_clock", torch.zeros(3, dtype=torch.int64))
        # counters and the last update's loss/energy on the device (not saved; see SynthStats)
        self.register_buffer("_counts", torch.zeros(4, dtype=torch.int64), persistent=False)
        self._last_update: tuple | None = None  # (loss, unit, sum of target mean squares, n, dtype): last accumulate
        self._clock: list[int] | None = [0, 0, 0]  # host copy of gate_clock (None: read it first)
        self._host = {"targets": 0, "zero_targets": 0, "dropped_ends": 0}
        self._reported = [0] * 4  # counters already warned about
        self.net: nn.Sequential | None = None
        self.optimizer = None
        self._params: list[nn.Parameter] = []  # the net's parameters (set with the optimizer)
        self.reset()  # the seed API's bookkeeping (dni_dist.seed_api)
        self._calls = 0
        self._cuts = 0  # seed API: cuts made so far (train_every picks the trained ones by this count)
        if size is not None and is_lstm is not None and num_layers is not None:
            self._build()

    @property
    def stats(self) -> SynthStats:
        """A view of the counters and the gate's statistics, read from the device when read."""
        return SynthStats(self)

    def _build(self) -> None:
        dim = (2 if self.is_lstm else 1) * self.num_layers * self.size
        layers: list[nn.Module] = []
        for _ in range(self.hidden_layers):
            layers += [nn.Linear(dim, dim), nn.GELU()]
        out = nn.Linear(dim, dim)
        nn.init.zeros_(out.weight)  # zero output layer: at start this is exactly plain TBPTT
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)
        self._make_optimizer()

    def _make_optimizer(self) -> None:
        self._params = list(self.net.parameters())  # the same Parameter objects for the net's life (.to() included)
        if self.optimizer_cls is torch.optim.Adam:
            self.optimizer = optim.adam(self.net.parameters(), self.lr)
        else:
            self.optimizer = self.optimizer_cls(self.net.parameters(), lr=self.lr)

    @property
    def built(self) -> bool:
        return self.net is not None

    @classmethod
    def for_rnn(cls, rnn: nn.Module, **kwargs) -> "Synthesizer":
        """A synthesizer sized for ``rnn`` (``nn.LSTM``/``GRU``/``RNN`` or a cell)."""
        if getattr(rnn, "bidirectional", False):
            raise ValueError("bidirectional RNNs are not supported: truncated BPTT carries state forward in "
                             "time only, and a backward direction's state has no future to predict a gradient for")
        is_lstm = isinstance(rnn, (nn.LSTM, nn.LSTMCell))
        if getattr(rnn, "proj_size", 0):
            raise ValueError("nn.LSTM with proj_size > 0 is not supported (h and c differ in size)")
        return cls(rnn.hidden_size, is_lstm=is_lstm, num_layers=getattr(rnn, "num_layers", 1), **kwargs)

    @classmethod
    def for_state(cls, state: State, **kwargs) -> "Synthesizer":
        """A synthesizer sized for ``state``, a state a model returned (built at once)."""
        synth = cls(**kwargs)
        synth._infer(state)
        synth._build()
        synth._follow(state)
        return synth

    def _infer(self, state: State) -> None:
        """Fill in size, is_lstm and num_layers left as None from a state the model returned."""
        size, is_lstm, layers = infer_form(state)
        self.size = size if self.size is None else self.size
        self.is_lstm = is_lstm if self.is_lstm is None else self.is_lstm
        self.num_layers = layers if self.num_layers is None else self.num_layers

    # ------------------------------------------------------------------ validation
    def check_state(self, state, name: str = "state") -> None:
        """Raise a clear error unless ``state`` has the form this synthesizer was built for.
        A synthesizer created without its sizes takes them from the first state it checks."""
        if not self.built:
            self._infer(state)
        check_form(state, self.size, self.is_lstm, self.num_layers, name)

    def _follow(self, state: State) -> None:
        """Device and dtype follow the state (moved once, before the optimizer holds any state)."""
        if not self.built:
            self._build()
        h = tg.as_tuple(state)[0]
        w = self.net[-1].weight
        if w.device == h.device and w.dtype == h.dtype:
            return
        if self.optimizer.state:
            raise ValueError(f"the state is on {h.device}/{h.dtype} but the synthesizer's trained weights are "
                             f"on {w.device}/{w.dtype}; move it with synth.to(...) before training")
        self.to(device=h.device, dtype=h.dtype)
        self._make_optimizer()  # no state yet (checked above): rebuilt for the new device

    # ------------------------------------------------------------------ checkpoints
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self._clock is not None:  # the host's clock is the truth; the buffer is written when saved
            self.gate_clock.copy_(torch.tensor(self._clock, dtype=torch.int64))
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "gate_clock" not in state_dict and prefix + "fit" in state_dict:
            # saved before the clock existed: zeros, read at the next injection
            state_dict[prefix + "gate_clock"] = torch.zeros(3, dtype=torch.int64)
        self._clock = None  # read from the loaded buffer when first needed (one read after a load)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ functional core (on the device)
    def forward(self, state: State) -> State:
        """The raw predicted gradient ``S(state)``, structured like ``state`` (not scaled, not centred)."""
        self.check_state(state)
        self._follow(state)
        return tg.unflatten_state(self._predict(tg.flatten_state(tg.detach(state))), state)

    def _unit(self):
        """Size of one output unit in gradient units: sqrt of the running target mean square when
        normalizing (1 before the first target), as a 0-dim tensor of the weights' dtype."""
        if not self.normalize:
            return 1.0
        ms = self.target_ms
        return torch.where(ms > 0, ms.double().sqrt(), 1.0).to(ms.dtype)

    def _ready(self):
        """False (a device bool) until the first targets have set the output unit (normalize=True):
        that batch only initialises the scale, since a step taken in the wrong units overshoots."""
        return self.target_ms > 0 if self.normalize else torch.ones((), dtype=torch.bool, device=self.fit.device)

    def _predict(self, flat: torch.Tensor) -> torch.Tensor:
        return self.net(flat) * self._unit()

    def _scale(self):
        """``factor`` times the gate, ``clamp(tolerance * <p, d> / <p, p>, 0, 1)`` on recent targets
        (0 before the warm-up's end), a 0-dim float64 tensor; ``factor`` alone without the gate."""
        if not self.gate:
            return self.factor
        pd, pp = self.fit[0].double(), self.fit[1].double()
        gate = (self.gate_tolerance * pd / pp).clamp(0.0, 1.0)
        return torch.where((pp > 0) & self._warmed(), gate, 0.0) * self.factor

    def _warmed(self) -> torch.Tensor:
        if not self.gate_warmup:
            return torch.ones((), dtype=torch.bool, device=self.fit.device)
        return self.fit_count >= self.gate_warmup

    def injection_scale(self) -> float:
        """What an injection is scaled by now (``factor`` times the gate). Reads it from the device."""
        return float(self._scale())

    def scale_ready(self) -> bool:
        """Whether the output unit is set (reads it from the device)."""
        return bool(self._ready())

    def _clock_now(self) -> list[int]:
        if self._clock is None:
            self._clock = [int(v) for v in self.gate_clock.tolist()]  # once after a load
        return self._clock

    def tick(self) -> None:
        """Advance the gate's clock by one chunk: once per ``backward_synthetic`` call (the seed API) or
        per engine tick on every worker, before the chunk's injection. Every ``gate_check_every``
        ticks (the first included) the host reads the device's gate (whether it is open, and whether
        its warm-up is over) and holds it until the next read. Counted in ticks, not injections, so
        that the engine's replicas read at the same ticks, hold the same view, and a checkpoint of
        one of them resumes them all exactly. (Round 15: taking it from a post made a tick earlier,
        which never waits for a GPU, solved fewer held-out seeds; not kept.)"""
        clock = self._clock_now()
        m = self.gate_check_every
        if self.gate and m and clock[0] % m == 0:  # the scheduled read (m == 0: never)
            clock[1], clock[2] = (int(v) for v in torch.stack([self._scale() > 0, self._warmed()]).tolist())
        clock[0] += 1

    def ticks(self) -> int:
        """Ticks so far (see :meth:`tick`)."""
        return self._clock_now()[0]

    def gate_open(self) -> bool:
        """The host's view of the gate (no read): False while the last scheduled read found it shut,
        and then an injection is skipped (nothing predicted, nothing injected, no ``J^T g`` pass).
        ``gate_check_every=0``: always open to the host (the device's gate scales what is injected)."""
        if not self.gate or self.gate_check_every == 0:
            return self.factor > 0
        return bool(self._clock_now()[1])

    def keep_cut(self, index: int) -> bool:
        """Whether the cut after chunk ``index`` (the chunk's place in the run: the seed API counts
        calls, the engine ``batch * chunks + chunk``) is regressed on: every cut, except one in
        ``shut_train_every`` while the gate reads shut after its warm-up (the host's view, no read)."""
        if self.shut_train_every == 1 or not self.gate:
            return True
        clock = self._clock_now()
        return bool(clock[1]) or not clock[2] or index % self.shut_train_every == 0

    def inject(self, state: State) -> State | None:
        """The synthetic gradient to inject at ``state``, or None while the gate reads shut."""
        return self.synthetic_gradient(state) if self.gate_open() else None

    @torch.no_grad()
    def synthetic_gradient(self, state: State) -> State:
        """What is injected at a boundary: ``factor * gate * centre(S(state))``; zeros if not finite
        (counted in ``stats.nonfinite_predictions``, warned about when the stats are read)."""
        self.check_state(state)
        self._follow(state)
        sflat = tg.flatten_state(tg.detach(state))
        flat = self._direction(self._predict(sflat), sflat) * self._scale()
        ok = tg.finite(flat)
        self._counts[NONFINITE_PREDICTIONS] += ~ok
        return tg.unflatten_state(torch.where(ok, flat, 0.0), state)

    @torch.no_grad()
    def _direction(self, pred: torch.Tensor, sflat: torch.Tensor) -> torch.Tensor:
        """What of a flat prediction is injected (before the gate's scale): centred over the batch,
        then (``orthogonal``) without its component along the state."""
        if self.centre:
            pred = tg.centre_over_batch(pred)
        if self.orthogonal:
            pred = tg.orthogonal_to_state(pred, sflat, self.size)
        return pred

    @torch.no_grad()
    def observe_targets(self, mean_square) -> None:
        """Fold the mean square of new targets into the running scale, keeping predictions
        unchanged (the output layer is rescaled by old/new unit: PopArt's "preserving outputs").
        A non-finite or non-positive mean square is ignored: the scale never leaves (0, inf)."""
        if not self.normalize:
            return
        msq = torch.as_tensor(mean_square, dtype=torch.float64, device=self.target_ms.device)
        ms = self.target_ms.double()
        new = torch.where(ms == 0, msq, self.scale_decay * ms + (1 - self.scale_decay) * msq)
        new = new.to(self.target_ms.dtype).double()  # as the buffer stores it
        ok = torch.isfinite(msq.log() + new.log())  # both in (0, inf): log(0) = -inf, log(inf) = inf, log(<0) = NaN
        ratio = torch.where(ok, torch.where(ms > 0, ms.sqrt(), 1.0) / new.sqrt(), 1.0)
        self.target_ms.copy_(torch.where(ok, new, ms))
        out = self.net[-1]
        torch._foreach_mul_([out.weight, out.bias], ratio.to(out.weight.dtype))

    def accumulate(self, boundaries: list, targets: list) -> torch.Tensor:
        """Add the regression gradient of fresh predictions toward ``targets`` to ``.grad``.

        The prediction is recomputed now from the stored boundary state rather than reusing the
        tensor injected earlier: that one is one or more updates stale, and regressing on it
        reinforced its own error (issue 3: 8 of 9 runs solved with fresh predictions, 1 of 7 stale).
        A non-finite target (or boundary state) is masked out on the device and counted.

        Returns:
            ``[n, sum of target mean squares, sum <p,d>, sum <p,p>, sum <d,d>]`` (float64, on the
            device): the evidence :meth:`finish_update` needs. Sums over workers add up, so a
            distributed engine all-reduces this vector with the gradients. ``p`` is the centred
            prediction made before this update (out of sample), ``d`` the target, both in output units.
        """
        loss, rows, oks, cuts = None, [], [], []
        unit, ready = self._unit(), self._ready()
        linear = regression.exact_for(self.net, self.fit.device)  # its gradient without autograd, bit for bit
        for state, target in zip(boundaries, targets):
            tflat = tg.flatten_state(tg.detach(target))
            sflat = tg.flatten_state(tg.detach(state))
            ok = tg.finite(tflat, sflat)
            tflat, sflat = torch.where(ok, tflat, 0.0), torch.where(ok, sflat, 0.0)
            keep = ok & ready
            d = tflat / unit
            with torch.set_grad_enabled(not linear):
                pred = self.net(sflat)
            if linear:
                cuts.append((sflat, pred, d, keep))
            else:
                term = tg.regression_loss(pred, d) * keep
                loss = term if loss is None else loss + term
            with torch.no_grad():
                p = self._direction(pred, sflat)
                row = torch.stack([tflat.pow(2).mean(), (p * d).mean(), p.pow(2).mean(), d.pow(2).mean()])
                rows.append(torch.where(torch.stack([ok, keep, keep, keep]), row, 0.0))
            oks.append(ok)
        self._host["targets"] += len(oks)
        if not rows:
            return torch.zeros(5, dtype=torch.float64, device=self.fit.device)
        n = oks[0].to(torch.int64) if len(oks) == 1 else torch.stack(oks).sum()
        self._counts[NONFINITE_TARGETS] += len(oks) - n
        sums = rows[0] if len(rows) == 1 else torch.stack(rows).sum(0)
        evidence = torch.cat([n.double().view(1), sums.double()])
        if linear:
            regression.add_linear_grads(self.net[-1], cuts)
            loss = regression.loss_of(cuts)
        else:
            loss.backward()
        self._last_update = (loss.detach(), unit, sums[0], n, self.fit.dtype)  # SynthStats reads them when asked
        return evidence

    def finish_update(self, evidence: torch.Tensor) -> None:
        """Step on the accumulated gradient (when the scale is ready and every gradient is finite),
        then fold the evidence into the running scale and the gate. The seed API and the engine
        both end an update here; the engine passes the evidence summed over its workers. All on
        the device: a skipped step, a gate that does not move, are masks, not branches."""
        ev = evidence.to(device=self.fit.device, dtype=torch.float64)
        n, sq, pd, pp, dd = ev.unbind()
        grads = [p.grad for p in self._params if p.grad is not None]
        if grads:
            has = (n > 0) & self._ready()
            # one check: a sum is NaN/Inf when any element is (or when it overflows: skip then too)
            finite = torch.isfinite(torch.stack([g.sum() for g in grads])).all()
            self._counts[SKIPPED_UPDATES] += has & ~finite
            self.apply_update(has & finite)
        with torch.no_grad():
            ok = (n > 0) & torch.isfinite(pd + pp + dd) & (dd > 0)
            new = ev[2:5].to(self.fit.dtype) / n.to(self.fit.dtype)
            fit = self.fit.mul(self.gate_decay).add_((1 - self.gate_decay) * new)
            self.fit.copy_(torch.where(ok, fit, self.fit))
            if self.gate_warmup:
                self.fit_count.add_(ok)
        self.observe_targets(sq / n)  # n == 0: NaN, ignored
        self._clear_grads()

    def apply_update(self, ok=True) -> None:
        """One optimizer step of the synthesizer on its accumulated gradient where ``ok`` (a device
        bool; a fused Adam skips on the device, another optimizer reads ``ok``), then clear it."""
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self._params, self.clip)
        if not torch.is_tensor(ok):
            ok = torch.tensor(bool(ok), device=self.fit.device)
        optim.step(self.optimizer, ok)
        self._clear_grads()
        self._counts[UPDATES] += ok

    def _clear_grads(self) -> None:
        """``optimizer.zero_grad(set_to_none=True)`` without its bookkeeping (the synthesizer's own parameters)."""
        for p in self._params:
            p.grad = None
