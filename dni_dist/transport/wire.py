"""What a message looks like between processes, whichever path carries it (the backend's
isend/irecv, :mod:`.shm_messages`'s rings): a fixed-size int64 header (kind, batch, chunk,
dtype, shapes, payload size) and one contiguous payload ending in a sentinel.

The receiver checks the header, and the payload size it declares, before it takes the payload:
a wrong sequence number, shape, dtype or size raises :class:`.base.MessageError` naming the
sender; nothing is truncated. The sentinel makes a short payload an error, never uninitialised
memory. No torch.distributed here.
"""
from __future__ import annotations

import torch

from .base import Message, MessageError

KINDS = {"state": 1, "carry": 3, "target": 4}
SENTINEL = 8191.0  # exact in every float dtype we send
DTYPES = {torch.float32: 1, torch.float64: 2, torch.float16: 3, torch.bfloat16: 4}
HEADER = 16  # int64 slots: magic, kind, batch, chunk, dtype, payload size, ntensors, (ndim, dims...) packed
MAGIC = 0x444E49


def _numel(m: Message) -> int:
    return sum(int(torch.Size(s).numel()) for s in m.shapes)


def encode(m: Message) -> torch.Tensor:
    vals = [MAGIC, KINDS[m.kind], m.batch, m.chunk, DTYPES[m.dtype], _numel(m) + 1, len(m.shapes)]
    for s in m.shapes:
        vals += [len(s), *s]
    if len(vals) > HEADER:
        raise ValueError(f"message header needs {len(vals)} slots; at most {HEADER}")
    return torch.tensor(vals + [0] * (HEADER - len(vals)), dtype=torch.int64)


def decode(h: torch.Tensor) -> tuple[Message, int]:
    v = h.tolist()
    if v[0] != MAGIC:
        raise MessageError(f"received a header without the dni_dist magic number: {v[:6]}")
    kind = {k: n for n, k in KINDS.items()}.get(v[1], f"unknown({v[1]})")
    dtype = {k: d for d, k in DTYPES.items()}.get(v[4], None)
    shapes, i = [], 7
    for _ in range(min(max(v[6], 0), HEADER)):
        nd = v[i] if i < HEADER else 0
        shapes.append(tuple(v[i + 1:i + 1 + nd]))
        i += 1 + nd
    return Message(kind, v[2], v[3], tuple(shapes), dtype), v[5]


def pack(header: Message, tensors: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoded header and the payload (the tensors' values, then the sentinel) on ``device``."""
    parts = [t.detach().reshape(-1) for t in tensors]
    payload = torch.cat(parts + [parts[0].new_full((1,), SENTINEL)]).to(device)
    return encode(header).to(device), payload


def check_header(h: torch.Tensor, expected: Message, src: int) -> int:
    """Check a received header against what the schedule expects from worker ``src``; returns the
    payload's length in values (the end marker included)."""
    got, declared = decode(h.cpu())
    expected.check(got, src)
    values = _numel(expected) + 1
    if declared != values:
        raise MessageError(f"from worker {src}: expected {expected.describe()} ({values} values with "
                           f"the end marker), but the header declares {declared} values")
    return values


def unpack(payload: torch.Tensor, expected: Message, src: int) -> list:
    """The expected tensors, views of ``payload`` once its end marker is checked."""
    if float(payload[-1]) != SENTINEL:
        raise MessageError(f"from worker {src}: {expected.describe()} arrived short or corrupt (its end marker "
                           "is missing): fewer values were sent than its header declares")
    out, start = [], 0
    for s in expected.shapes:
        n = int(torch.Size(s).numel())
        out.append(payload[start:start + n].view(s))
        start += n
    return out
