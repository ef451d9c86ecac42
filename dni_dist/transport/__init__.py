"""How bytes move between workers: point-to-point messages between neighbours and one gradient
sum over all workers, behind :class:`.base.Transport`. :mod:`.factory` chooses the path; one
module per path:

- :mod:`.local`: K workers in one process (debug mode).
- :mod:`.backend`: messages and sums over torch.distributed (gloo on CPU, NCCL on GPU), and every
  wait on it (timeouts naming the peer). With :mod:`.factory`, the only modules that import
  torch.distributed.
- :mod:`.shm_messages`: messages through :mod:`.mailbox`'s rings in /dev/shm (one x86 host, CPU).
- :mod:`.shm_sums`: sums through :mod:`.shm`'s slots (one host, CPU), with the flags barrier
  (x86) or a 3-value all-reduce as the barrier (elsewhere).
- :mod:`.process`: one worker per process: the chosen message path and sum path, composed.
- :mod:`.wire`: the message header and the checks every process path makes on receipt.
"""
from .base import Message, MessageError, Transport

__all__ = ["Message", "MessageError", "Transport"]
