"""How well does the synthesizer predict the gradient truncation throws away?

For every boundary of a chunked sequence, compare the injected synthetic gradient with the true
full-BPTT gradient of all *future* losses with respect to that boundary state.
"""
from __future__ import annotations

import torch

from . import targets as tg


def alignment(model, synth, state, x, y, mask, truncation: int) -> list[dict]:
    """Cosine and norm ratio of synthetic vs true future gradients at each chunk boundary.

    Args:
        model: a :class:`dni_dist.model.SeqModel`.
        synth: the :class:`dni_dist.Synthesizer` to judge.
        state: initial state; x, y, mask: one batch (batch-first), length a multiple of ``truncation``.
        truncation: T, the chunk length.
    Returns:
        One dict per internal boundary c (after chunk c): ``cosine`` (over the whole batch),
        ``cosine_centred`` (batch mean removed from both, the direction that is injected),
        ``norm_ratio`` (|synthetic| / |true|).
    Model parameter gradients are left untouched.
    """
    length = x.shape[1]
    if length % truncation:
        raise ValueError(f"sequence length {length} is not a multiple of truncation {truncation}")
    n = length // truncation
    taps, ends, total = [], [], 0.0
    params = [p for p in model.parameters()]
    saved = [p.grad for p in params]
    for c in range(n):
        sl = slice(c * truncation, (c + 1) * truncation)
        loss, state = model.chunk_loss(x[:, sl], y[:, sl], mask[:, sl], state)
        total = total + loss
        if c < n - 1:
            zero = tg.like([torch.zeros_like(t, requires_grad=True) for t in tg.as_tuple(state)], state)
            state = tg.like([t + z for t, z in zip(tg.as_tuple(state), tg.as_tuple(zero))], state)
            taps.append(zero)
            ends.append(tg.detach(state))
    leaves = [z for tap in taps for z in tg.as_tuple(tap)]
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    for p, g in zip(params, saved):
        p.grad = g
    out, k = [], 0
    for tap, end in zip(taps, ends):
        m = len(tg.as_tuple(tap))
        true = tg.like([torch.zeros_like(z) if g is None else g for g, z in zip(grads[k:k + m], tg.as_tuple(tap))], tap)
        k += m
        with torch.no_grad():
            raw = tg.flatten_state(synth(end)) * synth.factor
            ref = tg.flatten_state(true)
            out.append({
                "cosine": _cos(raw, ref),
                "cosine_centred": _cos(tg.centre_over_batch(raw), tg.centre_over_batch(ref)),
                "norm_ratio": float(raw.norm() / ref.norm().clamp_min(1e-30)),
            })
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else 0.0
