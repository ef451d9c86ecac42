"""Research prototypes for issue 27 (synthetic gradients on text). Not library code.

``NextInputSynthesizer``: a :class:`dni_dist.Synthesizer` whose prediction at a cut also sees
what the next chunk will read (the next T input ids, one-hot), which is known at the cut. Same
defaults otherwise (normalised targets, centring, the gate with its warm-up, discount 0.5, fresh
predictions at regression time): it subclasses the library's class and only widens the input of
its network. The seed-API call gains one argument:

    hn = synth.backward_synthetic(hn, loss, next_inputs=x_next)   # x_next: (B, T) ids of the next chunk

``artbp_cut``: ARTBP-like randomized truncation (Tallec & Ollivier 2017, "Unbiasing Truncated
Backpropagation Through Time", arXiv 1705.08209): at a cut, truncate with probability p, else let
the gradient through scaled by 1 / (1 - p), so the gradient is an unbiased estimate of the
untruncated one (here: of the longer truncation it sits inside).

Written against the Synthesizer of this branch (docs/math.md); it overrides ``_build`` and
``accumulate`` and reads ``_pending``, internals the library may change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dni_dist import Synthesizer
from dni_dist import targets as tg


class _WithContext(nn.Module):
    """First layer of the synthesizer's net: appends the context of the state being predicted."""

    def __init__(self, owner):
        super().__init__()
        self.__dict__["_owner"] = owner  # not a submodule (it would contain itself)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        owner = self._owner
        if owner._queue is not None:  # regression: contexts of the resolved boundaries, in order
            if not owner._queue:
                raise RuntimeError("NextInputSynthesizer: no context left for a boundary being regressed")
            ctx = owner._queue.pop(0)
        else:                         # injection: the context given with this call
            ctx = owner._ctx
        return torch.cat([flat, ctx.to(flat.dtype)], dim=1)


class NextInputSynthesizer(Synthesizer):
    """A Synthesizer conditioned on the next chunk's input ids (one-hot, position by position).

    Args:
        vocab: number of input ids V.
        horizon: how many next inputs it sees (T); the context has ``horizon * vocab`` features.
        width: hidden width when ``hidden_layers > 0`` (default: the state size, as the library's).
        Other arguments: :class:`dni_dist.Synthesizer`'s.
    """

    def __init__(self, *args, vocab: int, horizon: int, width: int | None = None, **kwargs):
        self.vocab, self.horizon, self.width = int(vocab), int(horizon), width
        self._ctx, self._queue, self._ctx_of = None, None, {}
        super().__init__(*args, **kwargs)

    def features(self, next_inputs: torch.Tensor) -> torch.Tensor:
        if next_inputs.dim() != 2 or next_inputs.shape[1] != self.horizon:
            raise ValueError(f"next_inputs must be (B, {self.horizon}) ids; got {tuple(next_inputs.shape)}")
        return F.one_hot(next_inputs, self.vocab).flatten(1).float()

    def _build(self) -> None:
        dim = (2 if self.is_lstm else 1) * self.num_layers * self.size
        width_in = dim + self.horizon * self.vocab
        hidden = self.width or dim
        layers: list[nn.Module] = [_WithContext(self)]
        for _ in range(self.hidden_layers):
            layers += [nn.Linear(width_in, hidden), self.activation()]
            width_in = hidden
        out = nn.Linear(width_in, dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)
        self._make_optimizer()

    def backward_synthetic(self, hn, loss=None, *, next_inputs=None, last=False, model=None, inputs=None):
        if next_inputs is None and not last:
            raise ValueError("NextInputSynthesizer.backward_synthetic needs next_inputs=(B, T) ids of the next chunk")
        ctx = None if next_inputs is None else self.features(next_inputs)
        self._ctx = ctx
        out = super().backward_synthetic(hn, loss, last=last, model=model, inputs=inputs)
        if self._pending and self._pending[-1].state is out:
            self._ctx_of[id(tg.as_tuple(out)[0])] = ctx
        return out

    def accumulate(self, boundaries, targets):
        self._queue = [self._ctx_of.pop(id(tg.as_tuple(s)[0])) for s in boundaries]
        try:
            return super().accumulate(boundaries, targets)
        finally:
            self._queue = None

    def reset(self) -> None:
        super().reset()
        self._ctx_of = {}


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def artbp_cut(state, p: float, generator: torch.Generator):
    """Truncate ``state`` with probability ``p`` (detached); otherwise keep its graph and scale the
    gradient through it by ``1 / (1 - p)``. Returns ``(state, truncated)``."""
    if float(torch.rand((), generator=generator)) < p:
        return tg.detach(state), True
    return tg.like([_Scale.apply(t, 1.0 / (1.0 - p)) for t in tg.as_tuple(state)], state), False
