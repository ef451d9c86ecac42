"""Point-to-point messages through shared memory, for workers on one host.

gloo's receive of a state message needs the sender's gloo thread to answer a handshake; with as
many busy workers as cores that thread waits for a core, and the receiver for it (issue 13: ~5 ms
on every fourth tick at K=2 on 2 cores, although the state was sent a tick earlier;
docs/performance.md). A mailbox has no thread: the sender copies the message into a slot of a
file in ``/dev/shm`` that both map, the receiver copies it out.

One mailbox per direction of a pair of workers: a ring of ``SLOTS`` slots, each a stamp, the
payload's length, an int64 header and room for a payload of ``capacity`` bytes. The sender writes the header and payload of message
``w`` into slot ``w % SLOTS`` and then its stamp ``w + 1``; the receiver waits for that stamp,
copies the message out and then publishes how many it has read, which is what frees a slot. This
needs stores to become visible in program order (x86's total store order):
:func:`.shm.ordered_stores` says no elsewhere, and the transport then keeps gloo. A message larger than the slots moves the
ring to a new, larger file (the old ring's next slot says so), so messages stay in order.

The sender creates each file under a temporary name and renames it into place once complete;
the receiver maps it and unlinks the name, so nothing is left in ``/dev/shm`` once both mapped it.
Every wait has a timeout and checks, about five times a second, that the peer process is alive.

No torch.distributed here.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from .shm import poll

SLOTS = 16  # as many messages in flight per direction as the gloo path allows
MOVED = -1  # a header's first value: the ring continues in the next file
BACKEND = -2  # a header's first value: no room for a ring; this direction continues over the backend


class UseBackend(OSError):
    """/dev/shm has no room for this direction's ring: the sender has told the receiver, and both
    send this direction's messages with the backend from now on (as the sum falls back)."""

    def __str__(self) -> str:
        return str(self.strerror)


class Mailbox:
    """One direction between two workers on this host: ``post`` on the sender, ``take`` on the
    receiver (each side builds its own ``Mailbox`` with the same ``name``).

    Args:
        name: a path prefix in /dev/shm that this run and direction alone use.
        header_len: int64 values per header.
        timeout_s: how long ``post`` (a full ring) and ``take`` (nothing arrived) wait.
        alive: ``alive()`` says whether the peer is still running.
        what: names the peer in errors, e.g. ``"worker 0"``.
    """

    def __init__(self, name: str, header_len: int, timeout_s: float, alive: Callable[[], bool], what: str):
        self.name, self.header_len, self.timeout_s, self.alive, self.what = name, header_len, timeout_s, alive, what
        self.gen = 0         # files used so far
        self.count = 0       # messages posted (sender) or taken (receiver) in this file
        self.ctrl = None     # int64: [capacity, reads, then per slot: stamp, length, header...]
        self.data = None     # uint8: SLOTS payloads of `capacity` bytes
        self.capacity = 0
        self._made: list[str] = []

    # -- sender
    def post(self, header: torch.Tensor, payload: torch.Tensor) -> None:
        raw = payload.detach().reshape(-1).view(torch.uint8)
        if self.ctrl is None or raw.numel() > self.capacity:
            old = (self.ctrl, self.count)
            try:
                self._create(max(raw.numel(), 2 * self.capacity))
            except OSError as e:
                self._fall_back(old, e)
            if old[0] is not None:  # tell the receiver, in order, to follow into the new file
                self._write(old[0], old[1], torch.tensor([MOVED] + [0] * (self.header_len - 1)), None)
        self._write(self.ctrl, self.count, header, raw)
        self.count += 1

    def _write(self, ctrl, n: int, header: torch.Tensor, raw: torch.Tensor | None) -> None:
        self._wait(lambda: n - int(ctrl[1]) < SLOTS, f"a free slot in the mailbox to {self.what} (it is behind)")
        slot = n % SLOTS
        base = 2 + slot * (2 + self.header_len)
        ctrl[base + 2:base + 2 + self.header_len].copy_(header)
        if raw is not None:
            self.data[slot, :raw.numel()].copy_(raw)
        ctrl[base + 1] = 0 if raw is None else raw.numel()
        ctrl[base] = n + 1  # last: the message is complete

    def _create(self, capacity: int) -> None:
        self.gen += 1
        path = f"{self.name}_{self.gen}"
        nbytes = _ctrl_bytes(self.header_len) + SLOTS * capacity
        fd = os.open(path + ".tmp", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.posix_fallocate(fd, 0, nbytes)  # a full /dev/shm is an error here, not a SIGBUS later
        except OSError as e:
            os.unlink(path + ".tmp")
            raise OSError(e.errno, f"a message ring to {self.what} ({nbytes / 2**20:.1f} MiB) could not be reserved "
                          f"in /dev/shm: {e.strerror}; give the host or container more shared memory (docker run "
                          "--shm-size) or use --reduce backend") from None
        finally:
            os.close(fd)
        self._map(path + ".tmp", nbytes)
        self.ctrl[0] = capacity
        os.rename(path + ".tmp", path)  # complete: the receiver may open it
        self._made.append(path)
        self.count = 0

    def _fall_back(self, old: tuple, e: OSError) -> None:
        """No room in /dev/shm: tell the receiver, in order, that the messages continue over the
        backend (in the old ring, or by an empty marker file where the next ring would be)."""
        if old[0] is not None:
            self._write(old[0], old[1], torch.tensor([BACKEND] + [0] * (self.header_len - 1)), None)
        else:
            marker = f"{self.name}_{self.gen}.backend"
            os.close(os.open(marker, os.O_CREAT | os.O_WRONLY, 0o600))
            self._made.append(marker)
        self.ctrl = self.data = None
        raise UseBackend(e.errno, e.strerror or str(e)) from None

    # -- receiver
    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next message: its header and its payload bytes, as many as were posted (copies)."""
        while True:
            if self.ctrl is None:
                path = f"{self.name}_{self.gen + 1}"
                self._wait(lambda: os.path.exists(path) or os.path.exists(path + ".backend"),
                           f"the first message from {self.what}")
                if not os.path.exists(path):
                    os.unlink(path + ".backend")
                    raise UseBackend(28, f"{self.what} found no room for a message ring in /dev/shm")
                self._open(path)
            n = self.count
            slot = n % SLOTS
            base = 2 + slot * (2 + self.header_len)
            ctrl = self.ctrl
            self._wait(lambda: int(ctrl[base]) == n + 1, f"a message from {self.what}")
            header = ctrl[base + 2:base + 2 + self.header_len].clone()
            if int(header[0]) == MOVED:
                ctrl[1] = n + 1
                self.ctrl = None
                continue
            if int(header[0]) == BACKEND:
                ctrl[1] = n + 1
                self.ctrl = self.data = None
                raise UseBackend(28, f"{self.what} found no room for a larger message ring in /dev/shm")
            raw = self.data[slot, :int(ctrl[base + 1])].clone()
            self.count += 1
            ctrl[1] = n + 1  # frees the slot
            return header, raw

    def _open(self, path: str) -> None:
        self.gen += 1
        nbytes = os.path.getsize(path)
        self._map(path, nbytes)
        os.unlink(path)  # both sides have it mapped
        self.count = 0

    # -- both
    def _map(self, path: str, nbytes: int) -> None:
        buf = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
        head = _ctrl_bytes(self.header_len)
        self.ctrl = buf[:head].view(torch.int64)
        capacity = (nbytes - head) // SLOTS
        self.data = buf[head:head + SLOTS * capacity].view(SLOTS, capacity)
        self.capacity = capacity

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        poll(ready, self.timeout_s, self.alive, what, self.what)

    def close(self) -> None:
        for path in self._made:
            for p in (path, path + ".tmp"):
                if os.path.exists(p):
                    os.unlink(p)
        self._made = []
        self.ctrl = self.data = None


def _ctrl_bytes(header_len: int) -> int:
    n = 8 * (2 + SLOTS * (2 + header_len))
    return (n + 63) // 64 * 64
