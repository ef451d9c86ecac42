"""One chunk step, the unit of work of every mode: forward, loss, inject, backward, target.

Plain PyTorch. The seed API (``Synthesizer.backward_synthetic``) and the distributed workers
call the same pieces from :mod:`dni_dist.targets`. The step is split in two so that a worker can
send its final state on before it runs its own backward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import targets as tg
from .targets import State


@dataclass
class ChunkGraph:
    """A chunk after its forward pass: the loss and the boundary states, graph attached."""
    loss: torch.Tensor
    start: State
    end: State
    need_delta: bool


@dataclass
class ChunkResult:
    loss: float               # this chunk's loss (NaN when skipped; a device tensor with on_device=True)
    state_end: State          # final state, detached (sent forward)
    delta: State | None       # what reached the chunk's start state (see chunk_target)
    skipped: bool = False     # non-finite loss: nothing was back-propagated (on_device: a device bool, it was)
    vjp: tuple | None = None  # (end, start, g, discount): J^T g still to be taken out of delta
    injected: State | None = None  # the synthetic gradient injected at the chunk's end (None: none)


def chunk_forward(model, loss_fn, state_start: State | None, x, y, mask, *, need_delta: bool) -> ChunkGraph:
    """Forward one chunk from ``state_start`` (None: the model's own initial state; otherwise its
    graph is cut here): ``out, end = model(x, start)``, ``loss = loss_fn(out, y, mask)``."""
    if state_start is None:
        start = None
    else:
        start = tg.detach_requires_grad(state_start) if need_delta else tg.detach(state_start)
    out, end = model(x, start)
    loss = loss_fn(out, y, mask)
    if not torch.is_tensor(loss) or loss.dim() != 0:
        raise ValueError(f"the spec's loss must return a scalar tensor; got "
                         f"{tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__}")
    return ChunkGraph(loss, start, end, need_delta and start is not None)


def chunk_backward(graph: ChunkGraph, synth, *, inject: bool, on_device: bool = False) -> ChunkResult:
    """Inject the synthetic gradient at the chunk's end and back-propagate.

    Parameter gradients accumulate into ``.grad`` and are final when this returns. ``delta`` is
    what reached the start state, ``dL_c/dh_c + J^T g`` (None unless ``need_delta``); the
    bootstrapped target is :func:`chunk_target` of the result. With a discount below 1 the graph
    is kept for the ``J^T g`` pass that target needs, so a worker can start summing the model's
    gradients before it runs that pass. A non-finite loss is not back-propagated (``skipped``).
    With ``on_device=True`` (the engine) nothing is read back: every loss is back-propagated and
    ``loss``/``skipped`` are device tensors; the caller masks out what a non-finite loss produced.
    """
    end = tg.detach(graph.end)
    if on_device:
        value = graph.loss.detach()
        skipped = ~torch.isfinite(value)
    else:
        value = float(graph.loss.detach())
        if not math.isfinite(value):
            return ChunkResult(float("nan"), end, None, skipped=True)
        skipped = False
    loss, vjp, g = graph.loss, None, None
    if inject:
        g = synth.inject(graph.end)  # None while the synthesizer's gate reads shut: J^T 0 == 0, nothing to do
        if g is not None:
            if graph.need_delta and synth.discount != 1.0:
                vjp = (graph.end, graph.start, g, synth.discount)
            loss = loss + tg.surrogate(graph.end, g)
        elif synth.lookahead == 2:  # a two-step target takes what was injected: zeros
            g = tg.like([torch.zeros_like(t) for t in tg.as_tuple(graph.end)], graph.end)
    loss.backward(retain_graph=vjp is not None)
    delta = None
    if graph.need_delta:
        parts = tg.as_tuple(graph.start)
        delta = tg.like([t.grad if t.grad is not None else torch.zeros_like(t) for t in parts], graph.start)
    return ChunkResult(value, end, delta, skipped=skipped, vjp=vjp, injected=g)


def chunk_target(res: ChunkResult) -> State | None:
    """The bootstrapped target of the boundary at the chunk's start, ``dL_c/dh_c + discount *
    J^T g``: ``delta`` itself, or with ``(1 - discount) J^T g`` taken out (one more backward pass
    through the chunk, which frees its graph). Call once per result."""
    if res.delta is None or res.vjp is None:
        return res.delta
    end, start, g, discount = res.vjp
    res.vjp = None
    sg_part = tg.synthetic_vjp(end, start, g, keep_graph=False)
    return tg.bootstrap_target(res.delta, sg_part, discount)


def chunk_step(model, loss_fn, synth, state_start: State | None, x, y, mask, *, need_delta: bool,
               inject: bool) -> ChunkResult:
    """:func:`chunk_forward` then :func:`chunk_backward`."""
    graph = chunk_forward(model, loss_fn, state_start, x, y, mask, need_delta=need_delta)
    res = chunk_backward(graph, synth, inject=inject)
    res.delta = chunk_target(res)
    return res
