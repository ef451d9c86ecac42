"""Reference training loops over one batch of sequences: full BPTT, truncated BPTT, and DNI
through the seed API. The benchmarks use these; the engine's K=1 run must equal ``dni``."""
from __future__ import annotations

import math

import torch

from . import targets as tg

MODES = ("bptt", "tbptt", "dni")


def train_batch(model, synth, optimizer, x, y, mask, truncation: int, mode: str, *,
                clip: float | None = None, state=None) -> tuple[float, object]:
    """Train on one batch of sequences in ``mode``: 'bptt', 'tbptt' or 'dni' (the seed API).

    ``x.shape[1]`` must be a multiple of ``truncation`` (pad with
    :func:`dni_dist.tasks.pad_to_multiple`). TBPTT and DNI take one optimizer step per chunk,
    full BPTT one per batch. ``state`` carries a stream across batches (char-LM); None starts at zeros.
    Returns the batch's total loss (sum over steps, mean over batch) and the final (detached) state.
    With ``Synthesizer(lookahead=2)`` DNI regresses each cut on two-step targets (the seed API
    is given the model and each chunk's inputs, to run the chunk again a chunk later).

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
    span = length if mode == "bptt" else truncation
    n = length // span
    total = 0.0
    for c in range(n):
        sl = slice(c * span, (c + 1) * span)
        loss, state = model.chunk_loss(x[:, sl], y[:, sl], mask[:, sl], state)
        if mode == "dni":
            state = synth.backward_synthetic(state, loss, last=(c == n - 1), model=model, inputs=x[:, sl])
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
            synth.step()  # this chunk's cut has its target now; a two-step target completes a chunk later
    return total, tg.detach(state)
