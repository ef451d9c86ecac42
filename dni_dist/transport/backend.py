"""Messages and sums over the torch.distributed backend: gloo on CPU, NCCL on GPU.

The factory picks these paths when the workers are on several hosts, on a GPU, on one host
without a shared /dev/shm, or under ``--reduce backend``; the shared-memory paths fall back to
them where /dev/shm has no room.

- :class:`Backend`: the default group, and every wait on it: with a timeout, naming the peer it
  waits for (or, after a collective timed out, the workers that never reached it).
- :class:`BackendMessages`: each message's header, then its payload, sent with non-blocking
  ``isend`` on a process group of its own (states forward, stream carries from the last worker
  to the first), so no message queues behind the all-reduce on the default group.
- :class:`BackendSum`: the backend's all-reduce.

With :mod:`.factory`, the only module that imports torch.distributed.
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from . import wire
from .base import Message


class Backend:
    """The initialised default process group, its timeout, and the group the messages use."""

    def __init__(self, timeout_s: float):
        if not dist.is_initialized():
            raise RuntimeError("the process transport needs torch.distributed initialised (init_process_group)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.timeout = datetime.timedelta(seconds=timeout_s)
        # point-to-point messages on a group of their own, so they never queue behind the all-reduce
        # on the default group (creating a group is a collective call: all ranks)
        self.group = dist.new_group(timeout=self.timeout)
        self.collectives = 0  # sums finished so far: names a timed-out one alike on every worker
        try:  # where a rank whose collective timed out says so, so that the message can name who is stuck
            self._store = dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - a private API: without it the message just names no one
            self._store = None

    def barrier(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a small int64 tensor over the workers (the shared-memory slots' set-up barrier)."""
        self.wait(dist.all_reduce(values, async_op=True), "the shared-memory sum's set-up (every worker takes part)",
                  None)
        return values

    def wait(self, work, what: str, peer: int | None) -> None:
        limit = self.timeout.total_seconds()
        try:
            ok = work.wait(self.timeout)
        except RuntimeError as e:
            text = str(e)
            who = f"worker {peer}" if peer is not None else "a peer"
            if any(s in text.lower() for s in ("connection reset", "connection closed", "broken pipe", "eof")):
                raise ConnectionError(f"worker {self.rank}: {who} closed or reset the connection while this worker "
                                      f"was waiting for {what} (it probably died; its own error names the cause): "
                                      f"{text.splitlines()[0][:300]}") from e
            if "timed out" in text.lower() or "timeout" in text.lower():
                late = self.laggards() if peer is None else ""
                raise TimeoutError(f"worker {self.rank}: waited {limit:.0f}s for {what}; {who} sent nothing "
                                   f"(stopped, hung, or behind){late}: {text.splitlines()[0][:200]}") from e
            raise RuntimeError(f"worker {self.rank}: waiting for {what} failed: {text.splitlines()[0][:300]}") from e
        if ok is False:
            late = self.laggards() if peer is None else ""
            raise TimeoutError(f"worker {self.rank}: {what} did not arrive within {limit:.0f}s{late}")

    def laggards(self) -> str:
        """After an all-reduce timed out: say so in the store, wait briefly for the others to say
        the same, and name the ranks that did not (they never reached the collective)."""
        if self._store is None:
            return ""
        key = f"dni_dist/timed-out/{self.collectives}"
        try:
            self._store.set(f"{key}/{self.rank}", "1")
        except Exception:  # noqa: BLE001 - diagnostics only
            return ""
        stuck = []
        for r in range(self.world):
            if r == self.rank:
                continue
            try:
                self._store.wait([f"{key}/{r}"], datetime.timedelta(seconds=3))
            except Exception:  # noqa: BLE001 - it did not time out with us: it never arrived
                stuck.append(r)
        if not stuck:
            return ""
        return ("; " + ", ".join(f"worker {r}" for r in stuck) + " never reached it (stopped, hung, or much "
                "slower than the others)")


class BackendMessages:
    """Messages with ``isend``/``irecv`` on the backend's message group; at most 16 sends in flight."""

    def __init__(self, backend: Backend, device: torch.device):
        self.backend, self.device, self.group = backend, device, backend.group
        self._pending: list = []

    def send(self, dst: int, header: Message, tensors: list) -> None:
        h, payload = wire.pack(header, tensors, self.device)
        for buf in (h, payload):  # the buffer stays referenced until its send completes
            self._pending.append((dist.isend(buf, dst, group=self.group), buf))
        while len(self._pending) > 16:  # bound the sends in flight
            work, _ = self._pending.pop(0)
            self.backend.wait(work, f"a send to worker {dst}", dst)

    def recv(self, src: int, expected: Message) -> list:
        h = torch.empty(wire.HEADER, dtype=torch.int64, device=self.device)
        self.backend.wait(dist.irecv(h, src, group=self.group), f"the header of {expected.describe()} from worker "
                          f"{src}", src)
        values = wire.check_header(h, expected, src)
        payload = torch.full((values,), float("nan"), dtype=expected.dtype, device=self.device)
        self.backend.wait(dist.irecv(payload, src, group=self.group), f"{expected.describe()} from worker {src}", src)
        return wire.unpack(payload, expected, src)

    def close(self) -> None:
        pending, self._pending = self._pending, []
        for work, _ in pending:
            self.backend.wait(work, "a send to complete", None)


class BackendSum:
    """Gradient sums with the backend's all-reduce (on the device the backend sums on)."""

    def __init__(self, backend: Backend, device: torch.device):
        self.backend, self.device = backend, device

    def start(self, flat: torch.Tensor) -> "BackendHandle":
        buf = flat.to(self.device)
        return BackendHandle(self.backend, dist.all_reduce(buf, op=dist.ReduceOp.SUM, async_op=True), buf, flat.device)

    def close(self) -> None:
        pass


class BackendHandle:
    """One all-reduce in flight; :meth:`finish` waits for it and returns the sum where ``flat`` was."""

    def __init__(self, backend: Backend, work, buf: torch.Tensor, where: torch.device):
        self.backend, self.work, self.buf, self.where = backend, work, buf, where

    def finish(self) -> torch.Tensor:
        self.backend.wait(self.work, "the gradient all-reduce (every worker takes part)", None)
        return self.buf.to(self.where)
