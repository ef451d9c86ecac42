"""The one place a runner gets its transports from (issue 29): the path follows from where the
workers run, never from flags scattered in the runners.

- ``"local"``: K workers in this process (debug mode): :class:`.local.LocalTransport` over one
  :class:`.local.LocalHub`, sums in rank order.
- ``"process"``: one worker per process over an initialised torch.distributed group (torchrun,
  Ray actors): :class:`.torch_dist.TorchDistTransport`, which on one x86 host moves messages
  through :mod:`.mailbox` and sums through :mod:`.shm` (``reduce="auto"``), else through the
  backend (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

from .base import Transport


def local_transports(world: int) -> list[Transport]:
    """The K in-process transports of a debug run (rank order)."""
    from .local import LocalHub
    return LocalHub(world).transports()


def process_transport(timeout_s: float, device: str = "cpu", reduce: str = "auto") -> Transport:
    """This process's transport; torch.distributed must be initialised (a collective: every rank)."""
    from .torch_dist import TorchDistTransport
    return TorchDistTransport(timeout_s, device, reduce)
