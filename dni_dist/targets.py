"""Pure tensor functions behind synthetic gradients: state layout, injection, bootstrapped targets.

Everything here is plain PyTorch (no torch.distributed, no Ray) so that the seed API
(:class:`dni_dist.Synthesizer`) and every distributed worker share one implementation.

Notation (Jaderberg et al. 2017, "Decoupled Neural Interfaces using Synthetic Gradients",
arXiv 1608.05343, section 3.2): a sequence is cut into chunks of T steps; ``h_c`` is the state at
the boundary before chunk ``c``; ``S(h)`` is the synthesizer's prediction of
``dL_future / dh``. The gradient that reaches the start state ``h_c`` during chunk ``c``'s
backward pass is ``delta_c = dL_c/dh_c + J_c^T g_{c+1}`` where ``g_{c+1}`` is the synthetic
gradient injected at the chunk's end and ``J_c = dh_{c+1}/dh_c``.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

State = Union[torch.Tensor, tuple]  # a tensor (GRU/RNN/cells) or an (h, c) tuple (LSTM)


def as_tuple(state: State) -> tuple:
    """The state's tensors as a tuple: ``(h,)`` or ``(h, c)``."""
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def like(parts: Sequence[torch.Tensor], state: State) -> State:
    """Give ``parts`` the structure of ``state`` (a bare tensor or a tuple)."""
    return tuple(parts) if isinstance(state, (tuple, list)) else parts[0]


def flatten_state(state: State) -> torch.Tensor:
    """``(num_layers, B, H)`` or ``(B, H)`` tensors -> one ``(B, parts * num_layers * H)`` matrix.

    Layers and the LSTM's ``(h, c)`` are concatenated per batch row so that one synthesizer
    sees the whole boundary state of a sequence, as in the paper (which concatenates h and c).
    """
    rows = []
    for t in as_tuple(state):
        rows.append(t.reshape(t.shape[0], -1) if t.dim() == 2 else t.transpose(0, 1).reshape(t.shape[1], -1))
    return torch.cat(rows, dim=1)


def unflatten_state(flat: torch.Tensor, state: State) -> State:
    """Inverse of :func:`flatten_state`, shaped like ``state``."""
    parts, start = [], 0
    for t in as_tuple(state):
        n = t[0].numel() if t.dim() == 2 else t.shape[0] * t.shape[2]
        piece = flat[:, start:start + n]
        start += n
        if t.dim() == 2:
            parts.append(piece.reshape(t.shape).contiguous())
        else:
            parts.append(piece.reshape(t.shape[1], t.shape[0], t.shape[2]).transpose(0, 1).contiguous())
    return like(parts, state)


def centre_over_batch(flat: torch.Tensor) -> torch.Tensor:
    """Remove the batch mean of a ``(B, D)`` prediction.

    Why: targets are noisy and mostly unpredictable, so a synthesizer first learns their batch
    mean; injected as is, that mean pushes every sequence the same way and (measured on delayed
    recall, issue 3) made 2 of 3 seeds fail. The synthesizer is still trained on uncentred targets.
    """
    if flat.shape[0] < 2:
        return flat
    return flat - flat.mean(dim=0, keepdim=True)


def orthogonal_to_state(flat: torch.Tensor, state_flat: torch.Tensor, size: int) -> torch.Tensor:
    """Remove from each ``size``-wide block of ``flat`` (one per layer and part, per batch row; the
    layout of :func:`flatten_state`) its component along the same block of the state.

    Why (``Synthesizer(orthogonal=True)``): injected along the state itself, a synthetic gradient
    pushes the state's norm; in a stream that is never reset an LSTM's cell state then grew without
    bound (mean |c| ~ 150-250), saturated, and the model fell to chance and stayed there
    (examples/seed_cell.py; docs/results.md, round 12). Without that component, the injection does
    not change the norm of the state it is injected at, to first order.
    """
    b = flat.shape[0]
    g, s = flat.reshape(b, -1, size), state_flat.reshape(b, -1, size)
    coef = (g * s).sum(-1, keepdim=True) / (s * s).sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    return (g - coef * s).reshape(b, -1)


def surrogate(state_end: State, grad: State) -> torch.Tensor:
    """A scalar whose value is exactly 0 and whose gradient at ``state_end`` is ``grad``.

    ``loss + surrogate(h, g)`` has the value of ``loss`` and injects ``g`` at ``h`` in the same
    backward pass, so the user's single ``loss.backward()`` carries both and no gradient is
    counted twice.
    """
    total = None
    for h, g in zip(as_tuple(state_end), as_tuple(grad)):
        s = (h * g).sum()
        total = s if total is None else total + s
    return total - total.detach()


def synthetic_vjp(state_end: State, state_start: State, grad: State, keep_graph: bool = True) -> State | None:
    """``J^T g``: the part of ``delta`` at ``state_start`` that comes from the injected ``grad``.

    Needed only when the bootstrap is discounted (``discount != 1``); returns None when
    ``state_start`` is not in ``state_end``'s graph. Keeps the graph (for the real backward)
    unless ``keep_graph=False``.
    """
    ends = [h for h in as_tuple(state_end)]
    starts = [s for s in as_tuple(state_start)]
    got = torch.autograd.grad(ends, starts, [g for g in as_tuple(grad)], retain_graph=keep_graph,
                              allow_unused=True)
    if all(g is None for g in got):
        return None
    return like([torch.zeros_like(s) if g is None else g for g, s in zip(got, starts)], state_start)


def bootstrap_target(delta: State, sg_part: State | None, discount: float) -> State:
    """The synthesizer's target at a boundary: ``dL_c/dh_c + discount * J^T g_{c+1}``.

    Args:
        delta: the total gradient that reached the start state (true loss part + ``J^T g``).
        sg_part: ``J^T g`` from :func:`synthetic_vjp`, or None when no synthetic gradient was
            injected at the chunk's end (then ``delta`` is already the true gradient).
        discount: gamma in [0, 1]. 1 is the paper's bootstrap; < 1 damps the self-referential
            part, which (issue 3) avoids the constant-offset fixed point gamma=1 collapses to.
    Returns:
        The target, structured like ``delta``.
    """
    if sg_part is None or discount == 1.0:
        return delta
    return like([d - (1.0 - discount) * s for d, s in zip(as_tuple(delta), as_tuple(sg_part))], delta)


def two_step_target(delta: State, injected: State, next_target: State, vjp, discount: float,
                    weight: float) -> State:
    """The two-step target of the cut before chunk ``c`` (``Synthesizer(lookahead=2)``):
    ``dL_c/dh_c + J_c^T [(1 - w) * discount * g_{c+1} + w * target_{c+1}]``, with ``target_{c+1}``
    the next cut's one-step target. ``delta`` already holds ``dL_c/dh_c + J_c^T g_{c+1}``, so the
    cotangent taken through the chunk is ``((1 - w) * discount - 1) * g_{c+1} + w * target_{c+1}``;
    ``vjp(cotangent)`` returns ``J_c^T cotangent`` (see :func:`chunk_vjp`)."""
    cot = [((1.0 - weight) * discount - 1.0) * g + weight * t
           for g, t in zip(as_tuple(injected), as_tuple(next_target))]
    return like([d + j for d, j in zip(as_tuple(delta), vjp(cot))], delta)


def snapshot(model) -> dict:
    """Detached copies of ``model``'s weights, by name: what :func:`chunk_vjp` runs a chunk with
    again after the optimizer has moved the live weights."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def chunk_vjp(model, params: dict, inputs, start: State, cotangent: Sequence[torch.Tensor]) -> list:
    """``J^T v`` of one chunk: the gradient of ``<v, end>`` at its start state, from running
    ``model(inputs, start) -> (out, end)`` again with ``params`` (the weights the chunk ran with;
    detached copies, so no weight gradient is taken)."""
    s = detach_requires_grad(start)
    got = torch.func.functional_call(model, params, (inputs, s))
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise TypeError("a two-step target runs the chunk again as model(inputs, state) and needs (out, state) "
                        f"back, as nn.LSTM returns; got {type(got).__name__}")
    ends, starts = list(as_tuple(got[1])), list(as_tuple(s))
    grads = torch.autograd.grad(ends, starts, list(cotangent), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, starts)]


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over batch and units, for flattened ``(B, D)`` tensors."""
    return torch.nn.functional.mse_loss(pred, target, reduction="mean")


def finite(*tensors: torch.Tensor) -> torch.Tensor:
    """True (a device bool) when no element of ``tensors`` is NaN or +-Inf. ``x * 0`` is 0 for a finite
    ``x`` and NaN otherwise, so the sum is exactly 0 when every element is finite (a plain sum could
    overflow); cheaper than ``isfinite(x).all()`` (no mask, no second reduction; docs/performance.md,
    round 15). Eager only: a compiler allowed fast-math could fold ``x * 0`` to 0."""
    if not tensors:
        raise ValueError("finite() needs at least one tensor")
    total = None
    for t in tensors:
        part = t.mul(0).sum()
        total = part if total is None else total + part
    return total == 0


def all_finite(state: State | None) -> bool:
    """True when every element of every tensor in ``state`` is finite."""
    if state is None:
        return True
    return all(bool(torch.isfinite(t).all()) for t in as_tuple(state))


def detach_requires_grad(state: State) -> State:
    """The state cut from its graph, as a leaf that requires grad so the next chunk's backward
    leaves ``delta`` in its ``.grad``."""
    return like([t.detach().requires_grad_(True) for t in as_tuple(state)], state)


def detach(state: State) -> State:
    return like([t.detach() for t in as_tuple(state)], state)
