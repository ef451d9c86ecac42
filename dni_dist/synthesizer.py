"""The synthesizer and the seed API: three added lines in a truncated-BPTT loop.

    synth = dni_dist.Synthesizer(size=H, is_lstm=True)
    ...
        hn = synth.backward_synthetic(hn, loss)   # before loss.backward()
        loss.backward()
    synth.step()                                  # after the sequence (or window)

References:
    Jaderberg et al. 2017, "Decoupled Neural Interfaces using Synthetic Gradients", arXiv 1608.05343.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from . import targets as tg
from .optim import adam
from .seed_api import SeedAPI
from .state_form import check_form, infer_form
from .targets import State


@dataclass
class SynthStats:
    """Counters a user or a benchmark can read (``synth.stats``)."""
    updates: int = 0
    targets: int = 0
    zero_targets: int = 0           # boundaries nothing followed (end of sequence)
    nonfinite_predictions: int = 0  # predictions replaced by zeros, never injected
    nonfinite_targets: int = 0      # targets dropped, never regressed on
    last_loss: float = float("nan")         # regression loss of the last update
    last_target_energy: float = float("nan")  # mean square of its targets (loss/energy ~1 = predicts nothing)
    skill: float = 0.0              # fraction of recent target variance explained by the injected direction
    gate: float = 0.0               # what the injection is scaled by now (least-squares shrinkage, in [0, 1])
    correlation: float = 0.0        # of the (centred) prediction with its target on recent targets
    skipped_updates: int = 0        # updates refused because a gradient was not finite


class Synthesizer(SeedAPI, nn.Module):
    """Predicts ``dL_future / d state`` at a truncation boundary and trains itself by bootstrapping.

    Args:
        size: hidden size H of the RNN (last dimension of its state). None: taken from the first
            state the synthesizer sees, like ``nn.LazyLinear``.
        is_lstm: True when the state is an ``(h, c)`` tuple. None: taken from the first state.
        hidden_layers: hidden layers of the synthesizer MLP; 0 (default) is a linear synthesizer,
            the setting all our measurements used (docs/math.md).
        factor: scale of the injected synthetic gradient (lambda). 1 = full scale.
        allow_backwarding: seed option (let the synthesizer's loss reach the RNN); not supported.
        activation: activation class between hidden layers.
        optimizer: optimizer class for the synthesizer's own parameters.
        lr: its learning rate.
        aux: seed option for the paper's auxiliary task; not supported (see docs/math.md).
        use_improvement: seed option: a boundary that nothing followed (end of sequence) is
            trained toward a zero gradient. False drops such boundaries instead.
        num_layers: layers of the RNN state (``nn.LSTM(num_layers=...)``); all layers are
            predicted jointly. None: taken from the first state.
        discount: gamma of the bootstrap, ``target = dL_c/dh + gamma * J^T g``. 1 is the paper's.
        centre: inject the prediction minus its batch mean (the synthesizer still learns the
            uncentred target). Needs batch size >= 2 to have an effect.
        clip: optional max-norm (> 0) for the synthesizer's gradient.
        normalize: learn targets in units of their running RMS (PopArt-style, van Hasselt et al.
            2016, arXiv 1602.07714): boundary gradients can be ~1e-4 in size, and Adam's steps
            do not shrink with them, so an unnormalised synthesizer overshoots by orders of
            magnitude (measured: predictions 100x their targets on delayed recall).
        scale_decay: decay of the running RMS (per update), in [0, 1).
        gate: scale the injection by ``clamp(gate_tolerance * <p, d> / <p, p>, 0, 1)`` over recent
            targets ``d`` and (centred) predictions ``p``. Injecting ``a * p`` has a smaller
            squared error against the target than injecting nothing exactly when
            ``a < 2 <p, d> / <p, p>``; with the default tolerance 2 the gate is the largest scale
            up to 1 that is never worse than plain TBPTT by that measure. A synthesizer that
            predicts noise, or points the wrong way, injects nothing. Without it a solved task
            collapsed late in training (issue 12); docs/math.md has the evidence.
        gate_decay: decay (per update) of the running sums the gate is computed from, in [0, 1).
        gate_tolerance: see ``gate``; 1 is the least-squares shrinkage (slower to learn in our
            ablation), larger values tolerate more over-confident predictions.
        gate_significance: k >= 0. With k > 0 the gate uses ``<p, d> - k * SE`` instead of
            ``<p, d>``, SE the standard error of its running mean (from a running mean of its square
            per update), so evidence that a prediction helps must stand k standard errors above
            zero before anything is injected. 0 (default) is the plain gate.
        gate_min_correlation: r0 >= 0. With r0 > 0 the gate is also multiplied by
            ``clamp(r / r0 - 1, 0, 1)``, r the correlation ``<p, d> / sqrt(<p, p> <d, d>)`` of recent
            predictions with their targets (r^2 is the fraction of target variance the prediction
            explains at its best scale): shut below r0, full from 2 r0. 0 (default) is off.
        gate_warmup: n >= 0 updates of evidence before the gate may open at all (0: off). The
            running sums start from a handful of targets, whose ratios are noise, and early in
            training the bootstrapped target is a poor stand-in for the future gradient. 100 (the
            gate's memory, 1 / (1 - gate_decay)) is the default since round 12 of docs/results.md:
            it won a rule fixed in advance on held-out text and delayed recall.
        lookahead: 1 (default) regresses each cut on the one-step bootstrapped target. 2: on two
            chunks of true gradient, ``dL_c/dh + J_c^T [(1 - w) discount g_{c+1} + w target_{c+1}]``
            (``target_{c+1}`` the next cut's one-step target), so credit reaches two cuts back
            (docs/math.md, "Two cuts with two-step targets"). It runs each chunk once more, a chunk
            later, with the weights it ran with: pass ``model=`` and ``inputs=`` to
            :meth:`backward_synthetic` (or train with :func:`dni_dist.loops.train_batch`); the
            engine does it itself (the next worker sends the next cut's target back).
        lookahead_weight: w above, in [0, 1] (lookahead=2 only); below 1 it mixes in the one-step
            target, the two-step case of a lambda-return.
        orthogonal: inject only the part of the (centred) prediction orthogonal to the state it
            is injected at, per layer, part and batch row (:func:`dni_dist.targets.orthogonal_to_state`);
            the synthesizer still regresses on the whole target. Stops the injection from driving the
            state's norm (an LSTM's cell state blew up in a never-reset stream without it).
        train_every: m >= 1. Train the synthesizer on one cut in m (the first cut and every m-th
            after it, counted over the run); every cut still gets its synthetic gradient. The
            others skip the ``J^T g`` pass and the regression, DNI's two costs beyond TBPTT
            (docs/math.md, "What DNI costs per update"), at the price of m times fewer targets.
            One-step targets only (``lookahead=1``).
    """

    def __init__(self, size: int | None = None, is_lstm: bool | None = None, hidden_layers: int = 0,
                 factor: float = 1.0, allow_backwarding: bool = False, activation: type = nn.GELU,
                 optimizer: type = torch.optim.Adam, lr: float = 3e-3, aux: bool = False,
                 use_improvement: bool = True, *, num_layers: int | None = None, discount: float = 0.5,
                 centre: bool = True, clip: float | None = None, normalize: bool = True,
                 scale_decay: float = 0.99, gate: bool = True, gate_decay: float = 0.99,
                 gate_tolerance: float = 2.0, gate_significance: float = 0.0,
                 gate_min_correlation: float = 0.0, gate_warmup: int = 100, lookahead: int = 1,
                 lookahead_weight: float = 1.0, train_every: int = 1, orthogonal: bool = False):
        super().__init__()

        def number(name, value, ok, expected):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not ok(value):
                raise ValueError(f"Synthesizer({name}={value!r}): expected {expected}")

        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"Synthesizer(size={size!r}): expected a positive int (the RNN's hidden size) "
                             "or None (taken from the first state)")
        if is_lstm is not None and not isinstance(is_lstm, bool):
            raise ValueError(f"Synthesizer(is_lstm={is_lstm!r}): expected True, False or None")
        if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int)
                                       or num_layers < 1):
            raise ValueError(f"Synthesizer(num_layers={num_layers!r}): expected a positive int or None")
        if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, int) or hidden_layers < 0:
            raise ValueError(f"Synthesizer(hidden_layers={hidden_layers!r}): expected an int >= 0")
        number("discount", discount, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
        number("factor", factor, lambda v: v >= 0.0, "a finite number >= 0")
        number("lr", lr, lambda v: v >= 0.0, "a finite number >= 0")
        number("scale_decay", scale_decay, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
        number("gate_decay", gate_decay, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
        number("gate_tolerance", gate_tolerance, lambda v: v >= 1.0, "a finite number >= 1")
        number("gate_significance", gate_significance, lambda v: v >= 0.0, "a finite number >= 0")
        number("gate_min_correlation", gate_min_correlation, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
        if isinstance(gate_warmup, bool) or not isinstance(gate_warmup, int) or gate_warmup < 0:
            raise ValueError(f"Synthesizer(gate_warmup={gate_warmup!r}): expected an int >= 0 (updates)")
        if isinstance(lookahead, bool) or lookahead not in (1, 2):
            raise ValueError(f"Synthesizer(lookahead={lookahead!r}): expected 1 (one-step bootstrap) or 2 "
                             "(two chunks of true gradient per target)")
        number("lookahead_weight", lookahead_weight, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
        if isinstance(train_every, bool) or not isinstance(train_every, int) or train_every < 1:
            raise ValueError(f"Synthesizer(train_every={train_every!r}): expected an int >= 1 (train on one cut in m)")
        if train_every > 1 and lookahead == 2:
            raise ValueError(f"Synthesizer(train_every={train_every}, lookahead=2): a two-step target needs the next "
                             "cut's one-step target, so every cut must be trained; use train_every=1 with lookahead=2")
        if not isinstance(orthogonal, bool):
            raise ValueError(f"Synthesizer(orthogonal={orthogonal!r}): expected True or False")
        if clip is not None:
            number("clip", clip, lambda v: v > 0.0, "None or a finite number > 0")
        if allow_backwarding:
            raise ValueError("allow_backwarding=True is not supported: letting the synthesizer's regression "
                             "loss flow into the RNN trains the RNN to make its gradients predictable, which "
                             "is not the DNI objective. Use the default allow_backwarding=False.")
        if aux:
            raise ValueError("aux=True (the paper's auxiliary future-synthetic-gradient task) is not supported: "
                             "it needs every intermediate RNN state, which backward_synthetic does not see. "
                             "Use the default aux=False (docs/math.md explains).")
        self.size, self.is_lstm, self.num_layers = size, is_lstm, num_layers
        self.hidden_layers, self.activation = hidden_layers, activation
        self.optimizer_cls, self.lr = optimizer, float(lr)
        self.factor, self.discount, self.centre = float(factor), float(discount), bool(centre)
        self.use_improvement, self.clip = bool(use_improvement), clip
        self.normalize, self.scale_decay = bool(normalize), float(scale_decay)
        self.gate, self.gate_decay, self.gate_tolerance = bool(gate), float(gate_decay), float(gate_tolerance)
        # running mean square of targets; 0 until the first target (a buffer: checkpointed)
        self.register_buffer("target_ms", torch.zeros(()))
        # running means of <p, d>, <p, p>, <d, d> per element, in output units (the gate's evidence)
        self.register_buffer("fit", torch.zeros(3))
        self.gate_significance, self.gate_min_correlation = float(gate_significance), float(gate_min_correlation)
        self.lookahead, self.lookahead_weight = lookahead, float(lookahead_weight)
        self.train_every, self.orthogonal = train_every, orthogonal
        if self.gate_significance > 0:  # running mean of <p, d>^2 per update (only then: old checkpoints load)
            self.register_buffer("fit_sq", torch.zeros(()))
        self.gate_warmup = gate_warmup
        if gate_warmup:  # updates of evidence so far (only then, as fit_sq)
            self.register_buffer("fit_count", torch.zeros(()))
        self._host: list[float] | None = None  # the statistics buffers as floats (see _read)
        self._count: float | None = None       # fit_count on the host (gate_warmup)
        self.net: nn.Sequential | None = None
        self.optimizer = None
        self.stats = SynthStats()
        self.reset()  # the seed API's bookkeeping (dni_dist.seed_api)
        self._calls = 0
        self._cuts = 0  # seed API: cuts made so far (train_every picks the trained ones by this count)
        if size is not None and is_lstm is not None and num_layers is not None:
            self._build()

    def _build(self) -> None:
        dim = (2 if self.is_lstm else 1) * self.num_layers * self.size
        layers: list[nn.Module] = []
        for _ in range(self.hidden_layers):
            layers += [nn.Linear(dim, dim), self.activation()]
        out = nn.Linear(dim, dim)
        nn.init.zeros_(out.weight)  # zero output layer: at start this is exactly plain TBPTT
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)
        self._make_optimizer()

    def _make_optimizer(self) -> None:
        if self.optimizer_cls is torch.optim.Adam:
            self.optimizer = adam(self.net.parameters(), self.lr)
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

    # ------------------------------------------------------------------ functional core
    def forward(self, state: State) -> State:
        """The raw predicted gradient ``S(state)``, structured like ``state`` (not scaled, not centred)."""
        self.check_state(state)
        self._follow(state)
        return tg.unflatten_state(self._predict(tg.flatten_state(tg.detach(state))), state)

    def _read(self) -> list[float]:
        """``[target_ms, *fit(, fit_sq)]`` as Python floats. Read from the buffers once (and again after a
        load or a move), then kept equal to them by every write, so an update reads no statistic
        back from the device: on a GPU each such read is a host-device synchronisation."""
        if self._host is None:
            self._host = [float(self.target_ms), *self.fit.tolist()]
            if self.gate_significance > 0:
                self._host.append(float(self.fit_sq))
        return self._host

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .double(), ...: values may be rounded
        self._host = self._count = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._host = self._count = None
        if self.gate_warmup and prefix + "fit_count" not in state_dict and prefix + "target_ms" in state_dict:
            # saved without a warm-up (gate_warmup=0 was the default before round 12): its gate had
            # opened already, so it resumes warmed up rather than shut for gate_warmup more updates
            seen = self.gate_warmup if float(state_dict[prefix + "target_ms"]) > 0 else 0
            state_dict[prefix + "fit_count"] = torch.tensor(float(seen))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _unit(self) -> float:
        """Size of one output unit in gradient units (the running target RMS when normalizing)."""
        if not self.normalize:
            return 1.0
        ms = self._read()[0]
        return ms ** 0.5 if ms > 0 else 1.0

    def _predict(self, flat: torch.Tensor) -> torch.Tensor:
        return self.net(flat) * self._unit()

    def injection_scale(self) -> float:
        """``factor`` times the gate ``clamp(tolerance * <p, d> / <p, p>, 0, 1)`` on recent targets
        (``factor`` alone without the gate)."""
        if not self.gate:
            return self.factor
        _, pd, pp, dd = self._read()[:4]
        if pp <= 0 or not self._warmed_up():
            return 0.0
        gate = min(max(self.gate_tolerance * (pd - self.gate_significance * self._pd_error()) / pp, 0.0), 1.0)
        if self.gate_min_correlation > 0:
            gate *= min(max(self._correlation(pd, pp, dd) / self.gate_min_correlation - 1.0, 0.0), 1.0)
        return self.factor * gate

    def _warmed_up(self) -> bool:
        return not self.gate_warmup or self._updates_seen() >= self.gate_warmup

    def _updates_seen(self) -> float:
        """gate_warmup's count of evidence updates (read from the buffer once, then counted on the host)."""
        if self._count is None:
            self._count = float(self.fit_count)
        return self._count

    @staticmethod
    def _correlation(pd: float, pp: float, dd: float) -> float:
        return pd / math.sqrt(pp * dd) if pp > 0 and dd > 0 else 0.0

    def _pd_error(self) -> float:
        """Standard error of the running mean of <p, d>: its per-update spread times the running
        mean's shrinkage sqrt((1 - decay) / (1 + decay)) (0 without gate_significance)."""
        if self.gate_significance <= 0:
            return 0.0
        host = self._read()
        var = max(host[4] - host[1] ** 2, 0.0)
        return math.sqrt(var * (1 - self.gate_decay) / (1 + self.gate_decay))

    @torch.no_grad()
    def synthetic_gradient(self, state: State) -> State:
        """What is injected at a boundary: ``factor * gate * centre(S(state))``; zeros if not finite."""
        self.check_state(state)
        self._follow(state)
        scale = self.injection_scale()
        sflat = tg.flatten_state(tg.detach(state))
        flat = self._direction(self._predict(sflat), sflat) * scale
        if not bool(torch.isfinite(flat).all()):
            self.stats.nonfinite_predictions += 1
            warnings.warn("dni_dist: the synthesizer predicted NaN/Inf; injecting zeros instead", RuntimeWarning)
            flat = torch.zeros_like(flat)
        return tg.unflatten_state(flat, state)

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
    def observe_targets(self, mean_square: float) -> None:
        """Fold the mean square of new targets into the running scale, keeping predictions
        unchanged (the output layer is rescaled by old/new unit: PopArt's "preserving outputs").
        A non-finite or non-positive mean square is ignored: the scale never leaves (0, inf)."""
        if not self.normalize or not math.isfinite(mean_square) or not mean_square > 0:
            return
        old = self._unit()
        ms = self._read()[0]
        new_ms = mean_square if ms == 0 else self.scale_decay * ms + (1 - self.scale_decay) * mean_square
        new_ms = torch.tensor(new_ms, dtype=self.target_ms.dtype).item()  # as the buffer stores it (on the host)
        if not math.isfinite(new_ms) or not new_ms > 0:
            return
        self.target_ms.fill_(new_ms)
        self._host[0] = new_ms
        ratio = old / self._unit()
        out = self.net[-1]
        out.weight.mul_(ratio)
        out.bias.mul_(ratio)

    def scale_ready(self) -> bool:
        """False until the first targets have set the output unit (normalize=True): that batch
        only initialises the scale, since a step taken in the wrong units overshoots."""
        return not self.normalize or self._read()[0] > 0

    def accumulate(self, boundaries: list, targets: list) -> torch.Tensor:
        """Add the regression gradient of fresh predictions toward ``targets`` to ``.grad``.

        The prediction is recomputed now from the stored boundary state rather than reusing the
        tensor injected earlier: that one is one or more updates stale, and regressing on it
        reinforced its own error (issue 3: 8 of 9 runs solved with fresh predictions, 1 of 7 stale).
        Non-finite targets are dropped and counted.

        Returns:
            ``[n, sum of target mean squares, sum <p,d>, sum <p,p>, sum <d,d>]`` (float64): the
            evidence :meth:`finish_update` needs. Sums over workers add up, so a distributed
            engine all-reduces this vector with the gradients. ``p`` is the centred prediction
            made before this update (out of sample), ``d`` the target, both in output units.
        """
        loss, n = None, 0
        sums = []  # per boundary: [target mean square, <p,d>, <p,p>, <d,d>] as tensors (one sync at the end)
        unit = self._unit()
        ready = self.scale_ready()
        for state, target in zip(boundaries, targets):
            tflat = tg.flatten_state(tg.detach(target))
            sflat = tg.flatten_state(tg.detach(state))
            if not bool(torch.isfinite(tflat).all() & torch.isfinite(sflat).all()):
                self.stats.nonfinite_targets += 1
                warnings.warn("dni_dist: a synthesizer target or boundary state is NaN/Inf; it was dropped",
                              RuntimeWarning)
                continue
            n += 1
            if ready:
                pred = self.net(sflat)
                d = tflat / unit
                term = tg.regression_loss(pred, d)
                loss = term if loss is None else loss + term
                with torch.no_grad():
                    p = self._direction(pred, sflat)
                    sums.append(torch.stack([tflat.pow(2).mean(), (p * d).mean(), p.pow(2).mean(),
                                             d.pow(2).mean()]))
            else:
                sums.append(torch.stack([tflat.pow(2).mean(), *tflat.new_zeros(3)]))
        evidence = torch.zeros(5, dtype=torch.float64)
        evidence[0] = n
        if sums:
            evidence[1:] = torch.stack(sums).sum(0).double()
        if loss is not None:
            loss.backward()
            self.stats.last_loss = float(loss.detach()) * unit ** 2 / n
            self.stats.last_target_energy = float(evidence[1]) / n
        self.stats.targets += n
        return evidence

    def finish_update(self, evidence: torch.Tensor) -> None:
        """Step on the accumulated gradient (when the scale is ready and every gradient is finite),
        then fold the evidence into the running scale and the gate. The seed API and the engine
        both end an update here; the engine passes the evidence summed over its workers."""
        n, sq, pd, pp, dd = evidence.tolist()
        if n > 0:
            if self.scale_ready():
                grads = [p.grad for p in self.net.parameters() if p.grad is not None]
                # one check: a sum is NaN/Inf when any element is (or when it overflows: skip then too)
                if not grads or bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all()):
                    self.apply_update()
                else:
                    self.stats.skipped_updates += 1
                    warnings.warn("dni_dist: the synthesizer's gradient is NaN/Inf; update skipped", RuntimeWarning)
                if math.isfinite(pd + pp + dd) and dd > 0:
                    with torch.no_grad():  # computed on the host (3 numbers), then written to the buffer
                        fit = torch.tensor(self._read()[1:4], dtype=self.fit.dtype)
                        new = torch.tensor([pd, pp, dd], dtype=self.fit.dtype) / n
                        fit.mul_(self.gate_decay).add_((1 - self.gate_decay) * new)
                        values = fit.tolist()
                        for i, v in enumerate(values):
                            self.fit[i].fill_(v)  # a value, not a host-to-device copy: no wait
                        self._host[1:4] = values
                        if self.gate_warmup:
                            self._count = self._updates_seen() + 1
                            self.fit_count.fill_(self._count)
                        if self.gate_significance > 0:
                            sq_pd = self._host[4] * self.gate_decay + (1 - self.gate_decay) * (pd / n) ** 2
                            sq_pd = torch.tensor(sq_pd, dtype=self.fit.dtype).item()
                            self.fit_sq.fill_(sq_pd)
                            self._host[4] = sq_pd
                    self._report_fit()
            self.observe_targets(sq / n)
        self.optimizer.zero_grad(set_to_none=True)

    def _report_fit(self) -> None:
        _, pd, pp, dd = self._read()[:4]
        self.stats.skill = (2 * pd - pp) / dd if dd > 0 else 0.0
        self.stats.correlation = self._correlation(pd, pp, dd)
        self.stats.gate = self.injection_scale() / self.factor if self.factor else 0.0

    def apply_update(self) -> None:
        """One optimizer step of the synthesizer on its accumulated gradient, then clear it."""
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.stats.updates += 1
