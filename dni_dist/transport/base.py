"""The transport interface the runners drive, and the message header every transport checks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


class MessageError(RuntimeError):
    """A received message is not what the schedule expects (wrong sequence, shape or dtype)."""


@dataclass(frozen=True)
class Message:
    """What a message claims to be: its kind, batch and chunk, and the shapes of its tensors."""
    kind: str          # "state", "carry" or "target"
    batch: int
    chunk: int
    shapes: tuple      # one shape per tensor
    dtype: torch.dtype

    def check(self, got: "Message", sender: int) -> None:
        if got != self:
            raise MessageError(f"from worker {sender}: expected {self.describe()}, received {got.describe()}")

    def describe(self) -> str:
        return f"{self.kind} of batch {self.batch} chunk {self.chunk} with shapes {list(self.shapes)} {self.dtype}"


@runtime_checkable
class Transport(Protocol):
    """Point-to-point messages between neighbouring workers and one sum over all workers.

    ``send`` never blocks on the receiver; ``recv`` and ``all_reduce_sum`` block at most the
    configured timeout and then raise. ``start_all_reduce`` returns a handle that ``finish``
    takes; at most one sum is in flight per worker.
    """

    rank: int
    world: int

    def send(self, dst: int, header: Message, tensors: list) -> None: ...

    def recv(self, src: int, expected: Message) -> list: ...

    def all_reduce_sum(self, flat: torch.Tensor) -> torch.Tensor: ...

    def start_all_reduce(self, flat: torch.Tensor): ...

    def finish(self, handle) -> torch.Tensor: ...

    def close(self) -> None: ...
