"""The options of :class:`dni_dist.Synthesizer`: the research options as one frozen dataclass and
the checks of the everyday ones. Its statistics (``synth.stats``) are :mod:`dni_dist.synth_stats`."""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass

import torch

@dataclass(frozen=True)
class SynthOptions:
    """Research options of :class:`Synthesizer` (the defaults are what docs/results.md measured best).
    Pass them as ``Synthesizer(options=SynthOptions(...))`` or, equally, as keywords
    (``Synthesizer(train_every=2)``).

    Args:
        hidden_layers: hidden layers (GELU) of the synthesizer MLP; 0 (default) is a linear
            synthesizer, the setting all our measurements used (docs/math.md).
        optimizer: optimizer class for the synthesizer's own parameters (default: Adam, fused
            where this torch has the kernel; a fused Adam skips a non-finite step on the device,
            any other optimizer makes that check read one value back per update).
        use_improvement: a boundary that nothing followed in the middle of a stream (the user
            started afresh without ``last=True``) is trained toward a zero gradient; False drops it.
            The boundary returned by the last ``backward_synthetic`` before :meth:`Synthesizer.step`
            is the end of a sequence: when nothing follows it, it is dropped either way (as the
            engine does).
        centre: inject the prediction minus its batch mean (the synthesizer still learns the
            uncentred target). Needs batch size >= 2 to have an effect.
        clip: optional max-norm (> 0) for the synthesizer's gradient.
        normalize: learn targets in units of their running RMS (PopArt-style, van Hasselt et al.
            2016): boundary gradients can be ~1e-4 in size, and Adam's steps do not shrink with
            them, so an unnormalised synthesizer overshoots by orders of magnitude.
        scale_decay: decay of the running RMS (per update), in [0, 1).
        gate_decay: decay (per update) of the running sums the gate is computed from, in [0, 1).
        gate_tolerance: the gate is ``clamp(tolerance * <p, d> / <p, p>, 0, 1)`` over recent
            targets ``d`` and (centred) predictions ``p``; 1 is the least-squares shrinkage, 2 (the
            default) the largest scale up to 1 never worse than plain TBPTT by that measure.
        gate_warmup: n >= 0 updates of evidence before the gate may open at all (0: off).
        gate_check_every: m >= 1. The gate lives on the device; the host reads whether it is open
            once every m chunks (``backward_synthetic`` calls; engine ticks), the only read of an
            update, and, while it reads shut, skips the prediction, the injection and the ``J^T g``
            pass (the regression goes on: it is the evidence the gate reopens on). So the gate opens
            up to m chunks after its evidence says so, and closes at once (what is injected is scaled
            on the device). 1 (default): read every chunk (the gate's math before issue 28, bit for bit;
            round 14: the scheduled read m=16 solved delayed recall on fewer held-out seeds, 4 of 6 vs 5 of 6;
            round 15: a read that never waits, of the gate posted a chunk earlier, 3 of 6: not kept).
            m=16 makes a GPU update free of host syncs. 0: never read it; predict, inject and take the
            ``J^T g`` pass at every chunk, scaled by the gate on the device (zero while it is shut):
            the same learning as 1, bit for bit, with no host read, at the open gate's cost always
            (for a GPU, where a sync can cost more than the pass; needs ``shut_train_every=1``).
        shut_train_every: k >= 1. While the gate reads shut after its warm-up, regress on one cut
            in k (the rest are not trained): the gate reopens on evidence from fewer targets, and a
            shut gate costs little more than TBPTT. 1 (default): every cut, as before. One-step
            targets only (``lookahead=1``).
        lookahead_weight: w in [0, 1] (``lookahead=2`` only); below 1 it mixes in the one-step
            target, the two-step case of a lambda-return.
        train_every: m >= 1. Train the synthesizer on one cut in m (counted over the run); every
            cut still gets its synthetic gradient. One-step targets only (``lookahead=1``).
        orthogonal: inject only the part of the (centred) prediction orthogonal to the state it
            is injected at, per layer, part and batch row; stops the injection from driving the
            state's norm (an LSTM's cell state blew up in a never-reset stream without it).
    """
    hidden_layers: int = 0
    optimizer: type = torch.optim.Adam
    use_improvement: bool = True
    centre: bool = True
    clip: float | None = None
    normalize: bool = True
    scale_decay: float = 0.99
    gate_decay: float = 0.99
    gate_tolerance: float = 2.0
    gate_warmup: int = 100
    gate_check_every: int = 1
    shut_train_every: int = 1
    lookahead_weight: float = 1.0
    train_every: int = 1
    orthogonal: bool = False

    def __post_init__(self):
        def number(name, ok, expected):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ValueError(f"Synthesizer({name}={v!r}): expected {expected}")

        def count(name, low, expected):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"Synthesizer({name}={v!r}): expected {expected}")

        def flag(name):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Synthesizer({name}={getattr(self, name)!r}): expected True or False")

        count("hidden_layers", 0, "an int >= 0")
        number("scale_decay", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
        number("gate_decay", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
        number("gate_tolerance", lambda v: v >= 1.0, "a finite number >= 1")
        count("gate_warmup", 0, "an int >= 0 (updates)")
        count("gate_check_every", 0, "an int >= 0 (chunks between two reads of the gate; 0: never read)")
        count("shut_train_every", 1, "an int >= 1 (cuts per trained cut while the gate is shut)")
        number("lookahead_weight", lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
        count("train_every", 1, "an int >= 1 (train on one cut in m)")
        for name in ("use_improvement", "centre", "normalize", "orthogonal"):
            flag(name)
        if self.clip is not None:
            number("clip", lambda v: v > 0.0, "None or a finite number > 0")
        if not isinstance(self.optimizer, type):
            raise ValueError(f"Synthesizer(optimizer={self.optimizer!r}): expected an optimizer class "
                             "such as torch.optim.Adam")


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(SynthOptions))


def merge_options(options: SynthOptions | None, more: dict) -> SynthOptions:
    """``options`` with the keyword options in ``more`` over it; an unknown keyword is an error
    naming the valid ones (and the closest, if one is close)."""
    if options is not None and not isinstance(options, SynthOptions):
        raise ValueError(f"Synthesizer(options={options!r}): expected a dni_dist.SynthOptions")
    unknown = [k for k in more if k not in OPTION_NAMES]
    if unknown:
        valid = ("size", "is_lstm", "num_layers", "lr", "factor", "discount", "lookahead", "gate", "options",
                 *OPTION_NAMES)
        k = unknown[0]
        close = difflib.get_close_matches(k, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"Synthesizer: unknown option {k!r}{hint}; valid options: {', '.join(valid)}")
    return dataclasses.replace(options or SynthOptions(), **more)


def check_everyday(size, is_lstm, num_layers, lr, factor, discount, lookahead, gate) -> None:
    def number(name, value, ok, expected):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not ok(value):
            raise ValueError(f"Synthesizer({name}={value!r}): expected {expected}")

    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"Synthesizer(size={size!r}): expected a positive int (the RNN's hidden size) "
                         "or None (taken from the first state)")
    if is_lstm is not None and not isinstance(is_lstm, bool):
        raise ValueError(f"Synthesizer(is_lstm={is_lstm!r}): expected True, False or None")
    if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1):
        raise ValueError(f"Synthesizer(num_layers={num_layers!r}): expected a positive int or None")
    number("discount", discount, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
    number("factor", factor, lambda v: v >= 0.0, "a finite number >= 0")
    number("lr", lr, lambda v: v >= 0.0, "a finite number >= 0")
    if isinstance(lookahead, bool) or lookahead not in (1, 2):
        raise ValueError(f"Synthesizer(lookahead={lookahead!r}): expected 1 (one-step bootstrap) or 2 "
                         "(two chunks of true gradient per target)")
    if not isinstance(gate, bool):
        raise ValueError(f"Synthesizer(gate={gate!r}): expected True or False")


def check_together(opts: SynthOptions, lookahead: int) -> None:
    """Options that cannot be combined: a clear error naming both."""
    if opts.shut_train_every > 1 and lookahead == 2:
        raise ValueError(f"Synthesizer(shut_train_every={opts.shut_train_every}, lookahead=2): a two-step target "
                         "needs the next cut's one-step target; use shut_train_every=1 with lookahead=2")
    if opts.gate_check_every == 0 and opts.shut_train_every > 1:
        raise ValueError(f"Synthesizer(gate_check_every=0, shut_train_every={opts.shut_train_every}): training "
                         "fewer cuts while the gate is shut needs the host to read the gate; use "
                         "gate_check_every >= 1, or shut_train_every=1")
    if opts.train_every > 1 and lookahead == 2:
        raise ValueError(f"Synthesizer(train_every={opts.train_every}, lookahead=2): a two-step target needs the "
                         "next cut's one-step target, so every cut must be trained; use train_every=1 with "
                         "lookahead=2")
