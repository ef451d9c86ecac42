"""torch.distributed transport: gloo on CPU, NCCL on GPU.

Each message is a fixed-size int64 header (kind, batch, chunk, dtype, shapes) followed by one
contiguous payload, sent with non-blocking ``isend`` on a process group of its own per
direction (forward states, backward deltas), so neither queues behind the other or behind the
all-reduce on the default group. The receiver checks the header before it receives the payload:
a wrong sequence number, shape or dtype raises :class:`MessageError` naming the sender; nothing
is truncated. Every wait has a timeout.
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from .base import Message, MessageError

KINDS = {"state": 1, "delta": 2}
DTYPES = {torch.float32: 1, torch.float64: 2, torch.float16: 3, torch.bfloat16: 4}
HEADER = 16  # int64 slots: magic, kind, batch, chunk, dtype, ntensors, then (ndim, dims...) packed


def _encode(m: Message) -> torch.Tensor:
    vals = [0x444E49, KINDS[m.kind], m.batch, m.chunk, DTYPES[m.dtype], len(m.shapes)]
    for s in m.shapes:
        vals += [len(s), *s]
    if len(vals) > HEADER:
        raise ValueError(f"message header needs {len(vals)} slots; at most {HEADER}")
    return torch.tensor(vals + [0] * (HEADER - len(vals)), dtype=torch.int64)


def _decode(h: torch.Tensor) -> Message:
    v = h.tolist()
    if v[0] != 0x444E49:
        raise MessageError(f"received a header without the dni_dist magic number: {v[:6]}")
    kind = {k: n for n, k in KINDS.items()}.get(v[1], f"unknown({v[1]})")
    dtype = {k: d for d, k in DTYPES.items()}.get(v[4], None)
    shapes, i = [], 6
    for _ in range(v[5]):
        nd = v[i]
        shapes.append(tuple(v[i + 1:i + 1 + nd]))
        i += 1 + nd
    return Message(kind, v[2], v[3], tuple(shapes), dtype)


class TorchDistTransport:
    """Transport over an initialised default process group."""

    def __init__(self, timeout_s: float, device: torch.device | str = "cpu"):
        if not dist.is_initialized():
            raise RuntimeError("TorchDistTransport needs torch.distributed initialised (init_process_group)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.device = torch.device(device)
        # one group per direction: states flow forward, deltas backward (collective calls: all ranks)
        self.groups = {"state": dist.new_group(timeout=self.timeout), "delta": dist.new_group(timeout=self.timeout)}
        self._pending: list = []

    def send(self, dst: int, header: Message, tensors: list) -> None:
        group = self.groups[header.kind]
        payload = torch.cat([t.detach().reshape(-1) for t in tensors]).to(self.device)
        h = _encode(header).to(self.device)
        for buf in (h, payload):  # the buffer stays referenced until its send completes
            self._pending.append((dist.isend(buf, dst, group=group), buf))
        while len(self._pending) > 16:  # bound the sends in flight
            work, _ = self._pending.pop(0)
            self._wait(work, f"a send to worker {dst}")

    def recv(self, src: int, expected: Message) -> list:
        group = self.groups[expected.kind]
        h = torch.empty(HEADER, dtype=torch.int64, device=self.device)
        self._wait(dist.irecv(h, src, group=group), f"the header of {expected.describe()} from worker {src}")
        expected.check(_decode(h.cpu()), src)
        sizes = [int(torch.Size(s).numel()) for s in expected.shapes]
        payload = torch.empty(sum(sizes), dtype=expected.dtype, device=self.device)
        self._wait(dist.irecv(payload, src, group=group), f"{expected.describe()} from worker {src}")
        out, start = [], 0
        for s, n in zip(expected.shapes, sizes):
            out.append(payload[start:start + n].view(s))
            start += n
        return out

    def all_reduce_sum(self, flat: torch.Tensor) -> torch.Tensor:
        return self.finish(self.start_all_reduce(flat))

    def start_all_reduce(self, flat: torch.Tensor):
        """Begin summing ``flat`` over all workers; :meth:`finish` waits for it."""
        buf = flat.to(self.device)
        return dist.all_reduce(buf, op=dist.ReduceOp.SUM, async_op=True), buf, flat.device

    def finish(self, handle) -> torch.Tensor:
        work, buf, device = handle
        self._wait(work, "the gradient all-reduce")
        return buf.to(device)

    def _wait(self, work, what: str) -> None:
        try:
            ok = work.wait(self.timeout)
        except RuntimeError as e:
            raise TimeoutError(f"worker {self.rank}: waiting for {what} failed or timed out after "
                               f"{self.timeout.total_seconds():.0f}s: {e}") from e
        if ok is False:
            raise TimeoutError(f"worker {self.rank}: {what} did not arrive within {self.timeout.total_seconds():.0f}s")

    def close(self) -> None:
        pending, self._pending = self._pending, []
        for work, _ in pending:
            self._wait(work, "a send to complete")
