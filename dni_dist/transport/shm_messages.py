"""Messages through shared memory: one :mod:`.mailbox` ring per direction, no gloo thread.

The factory picks this path when every worker is on this host, on the CPU, and stores become
visible in program order (x86; :func:`.shm.ordered_stores`): the same header, checks and errors
as :class:`.backend.BackendMessages` (:mod:`.wire`), without a backend thread in a tick (issue 13;
docs/performance.md).

Where a ring finds no room in /dev/shm (:class:`.mailbox.UseBackend`), that direction continues
over the backend, with a warning (a ``ValueError`` under ``--reduce shared-memory``); both ends
of the direction learn it in order, so each message is read where it was sent.
:class:`MailboxMessages` owns that choice: the rings, the backend path it falls back to, and the
directions moved over.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import mailbox, shm, wire
from .base import Message, MessageError


class MailboxMessages:
    """This worker's mailboxes to and from its peers.

    Args:
        rank: this worker.
        token: a name every worker of the run agrees on and no other run uses.
        pids: each worker's process id (``None``: unknown, rely on the timeout alone).
        timeout_s: how long a wait for a peer lasts.
        fallback: the backend's messages, for the directions without room in /dev/shm.
        strict: ``--reduce shared-memory``: no room is an error, not a warning.
    """

    def __init__(self, rank: int, token: str, pids: list, timeout_s: float, fallback, strict: bool):
        self.rank, self.token, self.pids, self.timeout_s = rank, token, pids, timeout_s
        self.fallback, self.strict = fallback, strict
        self.boxes: dict = {}
        self.over_backend: set = set()  # (src, dst) directions whose ring found no room in /dev/shm

    def box(self, src: int, dst: int) -> mailbox.Mailbox:
        key = (src, dst)
        if key not in self.boxes:
            peer = dst if src == self.rank else src
            pid = self.pids[peer]
            self.boxes[key] = mailbox.Mailbox(os.path.join(shm.SHM_DIR, f"dni_dist_{self.token}_mail_{src}_{dst}"),
                                              wire.HEADER, self.timeout_s, lambda: shm.alive(pid), f"worker {peer}")
        return self.boxes[key]

    def send(self, dst: int, header: Message, tensors: list) -> None:
        if (self.rank, dst) not in self.over_backend:
            h, payload = wire.pack(header, tensors, torch.device("cpu"))
            try:
                self.box(self.rank, dst).post(h, payload)
                return
            except (TimeoutError, ConnectionError) as e:
                raise type(e)(f"worker {self.rank}: {e}") from None
            except mailbox.UseBackend as e:  # as the sum does: go on over the backend, with a warning
                self._use_backend(self.rank, dst, e)
        self.fallback.send(dst, header, tensors)

    def recv(self, src: int, expected: Message) -> list:
        if (src, self.rank) not in self.over_backend:
            try:
                h, raw = self.box(src, self.rank).take()
            except (TimeoutError, ConnectionError) as e:
                raise type(e)(f"worker {self.rank}: waiting for {expected.describe()}: {e}") from None
            except mailbox.UseBackend as e:
                self._use_backend(src, self.rank, e)
            else:
                values = wire.check_header(h, expected, src)
                nbytes = values * torch.empty((), dtype=expected.dtype).element_size()
                if raw.numel() != nbytes:
                    raise MessageError(f"from worker {src}: {expected.describe()} arrived short or corrupt: "
                                       f"{raw.numel()} bytes where its header declares {nbytes}")
                return wire.unpack(raw.view(expected.dtype), expected, src)
        return self.fallback.recv(src, expected)

    def _use_backend(self, src: int, dst: int, e: OSError) -> None:
        """Messages from ``src`` to ``dst`` continue over the backend (no room in /dev/shm)."""
        if self.strict:
            raise ValueError(f"--reduce shared-memory: {e}; give the host (or container: docker run --shm-size) "
                             "more shared memory, or use --reduce auto or backend") from None
        self.over_backend.add((src, dst))
        if src == self.rank:
            warnings.warn(f"dni_dist: {e}; sending to worker {dst} with the backend instead", RuntimeWarning)

    def close(self) -> None:
        for b in self.boxes.values():
            b.close()
        self.fallback.close()
