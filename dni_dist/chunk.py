"""One chunk step, the unit of work of every mode: forward, loss, inject, backward, delta.

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
    loss: float               # this chunk's loss (NaN when skipped)
    state_end: State          # final state, detached (sent forward)
    delta: State | None       # bootstrapped target for the boundary at the chunk's start
    skipped: bool = False     # non-finite loss: nothing was back-propagated


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


def chunk_backward(graph: ChunkGraph, synth, *, inject: bool) -> ChunkResult:
    """Inject the synthetic gradient at the chunk's end, back-propagate, and read delta.

    Parameter gradients accumulate into ``.grad``. ``delta`` is ``dL_c/dh_c + discount * J^T g``,
    the bootstrapped target for the boundary at the chunk's start (None unless ``need_delta``).
    A non-finite loss is not back-propagated (``skipped``).
    """
    value = float(graph.loss.detach())
    end = tg.detach(graph.end)
    if not math.isfinite(value):
        return ChunkResult(float("nan"), end, None, skipped=True)
    loss, sg_part = graph.loss, None
    if inject:
        g = synth.synthetic_gradient(graph.end)
        if graph.need_delta and synth.discount != 1.0 and synth.injection_scale() > 0:  # g == 0: J^T g == 0
            sg_part = tg.synthetic_vjp(graph.end, graph.start, g)
        loss = loss + tg.surrogate(graph.end, g)
    loss.backward()
    delta = None
    if graph.need_delta:
        parts = tg.as_tuple(graph.start)
        grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in parts]
        delta = tg.bootstrap_target(tg.like(grads, graph.start), sg_part, synth.discount if synth else 1.0)
    return ChunkResult(value, end, delta)


def chunk_step(model, loss_fn, synth, state_start: State | None, x, y, mask, *, need_delta: bool,
               inject: bool) -> ChunkResult:
    """:func:`chunk_forward` then :func:`chunk_backward`."""
    graph = chunk_forward(model, loss_fn, state_start, x, y, mask, need_delta=need_delta)
    return chunk_backward(graph, synth, inject=inject)
