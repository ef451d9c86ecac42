"""Reference training loops over one batch of sequences: full BPTT, truncated BPTT, and DNI
through the seed API. The benchmarks use these; the engine's K=1 run must equal ``dni``."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import targets as tg
from .chunk import ChunkGraph, chunk_backward, chunk_target

MODES = ("bptt", "tbptt", "dni")


def train_batch(model, synth, optimizer, x, y, mask, truncation: int, mode: str, *,
                clip: float | None = None, state=None) -> tuple[float, object]:
    """Train on one batch of sequences in ``mode``: 'bptt', 'tbptt' or 'dni' (the seed API).

    ``x.shape[1]`` must be a multiple of ``truncation`` (pad with
    :func:`dni_dist.tasks.pad_to_multiple`). TBPTT and DNI take one optimizer step per chunk,
    full BPTT one per batch. ``state`` carries a stream across batches (char-LM); None starts at zeros.
    Returns the batch's total loss (sum over steps, mean over batch) and the final (detached) state.
    With ``Synthesizer(lookahead=2)`` DNI regresses each cut on two-step targets (see
    :func:`_dni_two_step`); the seed API cannot, since it never sees the model or the inputs.

    ``model`` is any ``nn.Module`` with ``chunk_loss(x, y, mask, state) -> (loss, end_state)``
    (loss: sum over steps, mean over batch), ``initial_state(batch, device=...)`` and, for
    ``lookahead=2``, ``forward(x, state) -> (out, end_state)``, as :class:`dni_dist.SeqModel` has.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if mode == "dni" and synth is None:
        raise ValueError("mode 'dni' needs a Synthesizer")
    length = x.shape[1]
    if length % truncation:
        raise ValueError(f"sequence length {length} is not a multiple of truncation {truncation}; "
                         "pad it with dni_dist.tasks.pad_to_multiple")
    if state is None:
        state = model.initial_state(x.shape[0], device=x.device)
    if mode == "dni" and synth.lookahead == 2:
        return _dni_two_step(model, synth, optimizer, x, y, mask, truncation, clip, state)
    span = length if mode == "bptt" else truncation
    n = length // span
    total = 0.0
    for c in range(n):
        sl = slice(c * span, (c + 1) * span)
        loss, state = model.chunk_loss(x[:, sl], y[:, sl], mask[:, sl], state)
        if mode == "dni":
            state = synth.backward_synthetic(state, loss, last=(c == n - 1))
        else:
            state = tg.detach(state)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at chunk {c}")
        total += value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    if mode == "dni":
        synth.step()
    return total, tg.detach(state)


@dataclass
class _Waiting:
    """A cut whose two-step target needs the next chunk's one-step target first."""
    start: object   # the state at the cut (detached)
    x: torch.Tensor  # the chunk after the cut: its inputs and the weights it ran with
    params: dict
    injected: object  # the synthetic gradient injected at that chunk's end
    delta: object     # what reached the cut in that chunk's backward: dL_c/dh + J_c^T g


def _dni_two_step(model, synth, optimizer, x, y, mask, truncation, clip, state):
    """DNI with two-step targets (``Synthesizer(lookahead=2)``): the target of the cut before
    chunk ``c`` is ``dL_c/dh + J_c^T [(1 - w) * discount * g_{c+1} + w * target_{c+1}]`` with
    ``target_{c+1}`` the next cut's one-step target. Each chunk runs as in every mode
    (:mod:`dni_dist.chunk`); ``J_c^T`` is taken a chunk later, by running chunk ``c`` again from
    the cut with the weights it ran with (the optimizer has changed them in place since, so its
    own graph cannot be reused): one forward and one backward more per chunk. The last chunk's
    cut gets its exact gradient (nothing follows)."""
    n = x.shape[1] // truncation
    gamma, w = synth.discount, synth.lookahead_weight
    total, waiting = 0.0, None
    for c in range(n):
        sl = slice(c * truncation, (c + 1) * truncation)
        start = tg.detach_requires_grad(state) if c > 0 else state
        params = ({k: v.detach().clone() for k, v in model.named_parameters()} if 0 < c < n - 1 else None)
        loss, end = model.chunk_loss(x[:, sl], y[:, sl], mask[:, sl], start)
        optimizer.zero_grad(set_to_none=True)
        res = chunk_backward(ChunkGraph(loss, start, end, need_delta=c > 0), synth, inject=c < n - 1)
        if res.skipped:
            raise FloatingPointError(f"loss is {float(loss.detach())} at chunk {c}")
        one_step = chunk_target(res)  # its J^T g pass needs the weights the chunk ran with: before the step
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        total += res.loss
        state = res.state_end
        if c == 0:
            continue
        bounds, targets = [], []
        if waiting is not None:
            cot = [((1.0 - w) * gamma - 1.0) * gp + w * t
                   for gp, t in zip(tg.as_tuple(waiting.injected), tg.as_tuple(one_step))]
            jv = _chunk_vjp(model, waiting.params, waiting.x, waiting.start, cot)
            bounds.append(waiting.start)
            targets.append(tg.like([d + j for d, j in zip(tg.as_tuple(waiting.delta), jv)], waiting.start))
            waiting = None
        if c < n - 1:
            waiting = _Waiting(tg.detach(start), x[:, sl], params, res.injected, res.delta)
        else:  # nothing was injected at the last chunk's end: its cut's one-step target is exact
            bounds.append(tg.detach(start))
            targets.append(one_step)
        synth.optimizer.zero_grad(set_to_none=True)
        synth.finish_update(synth.accumulate(bounds, targets))
    return total, state


def _chunk_vjp(model, params, x, start, cotangent):
    """``J^T v`` of one chunk: its end state's gradient w.r.t. its start state, run again with
    ``params`` (detached copies, so no weight gradient is taken)."""
    s = tg.detach_requires_grad(start)
    _, end = torch.func.functional_call(model, params, (x, s))
    got = torch.autograd.grad(list(tg.as_tuple(end)), list(tg.as_tuple(s)), list(cotangent), allow_unused=True)
    return [torch.zeros_like(t) if gg is None else gg for gg, t in zip(got, tg.as_tuple(s))]
