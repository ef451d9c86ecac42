"""The transport of one worker per process (torchrun, Ray actors): a message path and a sum path,
composed. :func:`.factory.process_transport` chooses both; this class only forwards to them.

Message paths (``send``/``recv``/``close``): :class:`.backend.BackendMessages`,
:class:`.shm_messages.MailboxMessages`. Sum paths (``start(flat)`` returns a handle whose
``finish()`` waits and returns the sum; ``close``): :class:`.backend.BackendSum`,
:class:`.shm_sums.FlagsSum`, :class:`.shm_sums.CheckedSum`.
"""
from __future__ import annotations

import torch

from .backend import Backend
from .base import Message


class ProcessTransport:
    """A :class:`.base.Transport` over ``backend``'s workers: messages through ``messages``, sums
    through ``sums``."""

    def __init__(self, backend: Backend, messages, sums):
        self.backend, self.messages, self.sums = backend, messages, sums
        self.rank, self.world = backend.rank, backend.world

    def send(self, dst: int, header: Message, tensors: list) -> None:
        self.messages.send(dst, header, tensors)

    def recv(self, src: int, expected: Message) -> list:
        return self.messages.recv(src, expected)

    def all_reduce_sum(self, flat: torch.Tensor) -> torch.Tensor:
        return self.finish(self.start_all_reduce(flat))

    def start_all_reduce(self, flat: torch.Tensor):
        """Begin summing ``flat`` over all workers; :meth:`finish` waits for it."""
        return self.sums.start(flat)

    def finish(self, handle) -> torch.Tensor:
        self.backend.collectives += 1  # every worker counts alike: a timed-out sum is named by its number
        return handle.finish()

    def close(self) -> None:
        self.sums.close()
        self.messages.close()
