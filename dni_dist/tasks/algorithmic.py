"""Generated tasks: delayed recall, copy and repeat-copy (Graves et al. 2014, as used by
Jaderberg et al. 2017, section 3.2)."""
from __future__ import annotations

import torch


def delayed_recall_batch(batch: int, length: int, delay: int, gen: torch.Generator):
    """Random bits; the target at step t is the input at step t - delay (no target before)."""
    if delay < 0 or delay >= length:
        raise ValueError(f"delay must be in [0, length={length}); got {delay}")
    bits = torch.randint(0, 2, (batch, length, 1), generator=gen).float()
    y = torch.zeros_like(bits)
    y[:, delay:] = bits[:, :length - delay]
    mask = torch.zeros(batch, length)
    mask[:, delay:] = 1.0
    return bits, y, mask


def copy_batch(batch: int, n: int, gen: torch.Generator, bits: int = 8):
    """N random ``bits``-bit vectors, a delimiter step, then N recall steps (targets only there).

    Input channels: ``bits`` data + 1 delimiter. Length ``2n + 1``.
    """
    if n < 1:
        raise ValueError(f"copy length n must be >= 1; got {n}")
    length = 2 * n + 1
    pat = torch.randint(0, 2, (batch, n, bits), generator=gen).float()
    x = torch.zeros(batch, length, bits + 1)
    x[:, :n, :bits] = pat
    x[:, n, bits] = 1.0
    y = torch.zeros(batch, length, bits)
    y[:, n + 1:] = pat
    mask = torch.zeros(batch, length)
    mask[:, n + 1:] = 1.0
    return x, y, mask


def repeat_copy_batch(batch: int, n: int, repeats: int, gen: torch.Generator, bits: int = 8,
                      max_repeats: int = 10):
    """N random vectors, a delimiter carrying the repeat count R (scaled by ``max_repeats``), then
    the pattern R times. Input channels: ``bits`` + delimiter + count. Length ``n + 1 + n*R``."""
    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be >= 1; got n={n}, repeats={repeats}")
    length = n + 1 + n * repeats
    pat = torch.randint(0, 2, (batch, n, bits), generator=gen).float()
    x = torch.zeros(batch, length, bits + 2)
    x[:, :n, :bits] = pat
    x[:, n, bits] = 1.0
    x[:, n, bits + 1] = repeats / max_repeats
    y = torch.zeros(batch, length, bits)
    y[:, n + 1:] = pat.repeat(1, repeats, 1)
    mask = torch.zeros(batch, length)
    mask[:, n + 1:] = 1.0
    return x, y, mask


def pad_to_multiple(x, y, mask, multiple: int):
    """Pad the time axis with masked steps so its length is a multiple of the truncation T.

    Nothing is cut: padded steps carry zero inputs and zero loss weight.
    """
    length = x.shape[1]
    extra = (-length) % multiple
    if extra == 0:
        return x, y, mask

    def pad(t):
        shape = list(t.shape)
        shape[1] = extra
        return torch.cat([t, torch.zeros(shape, dtype=t.dtype)], dim=1)

    return pad(x), pad(y), pad(mask)
