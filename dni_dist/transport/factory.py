"""The one place a runner gets its transports from, and the one place a path is chosen (issue 29):
the path follows from where the workers run, never from flags scattered in the runners.

- K workers in this process (debug mode): :func:`local_transports`, :class:`.local.LocalTransport`
  over one :class:`.local.LocalHub`, sums in rank order.
- One worker per process over an initialised torch.distributed group (torchrun, Ray actors):
  :func:`process_transport`, a :class:`.process.ProcessTransport` of one message path and one
  sum path, chosen from what every worker reports (:func:`_shared_memory`), with ``--reduce auto``:

  - one host, the CPU, a /dev/shm all of them see, x86 (stores seen in program order): messages
    through :class:`.shm_messages.MailboxMessages`, sums through :class:`.shm_sums.FlagsSum`;
  - the same, not x86: messages through :class:`.backend.BackendMessages`, sums through
    :class:`.shm_sums.CheckedSum`;
  - several hosts, a GPU, or no shared /dev/shm: :class:`.backend.BackendMessages` and
    :class:`.backend.BackendSum` (gloo on CPU, NCCL on GPU).

  ``--reduce backend`` always takes the last; ``--reduce shared-memory`` is an error where auto
  would take the last. A shared-memory path with no room in /dev/shm falls back to the backend's
  (per message direction, or for every sum at once), with a warning.
"""
from __future__ import annotations

import os
import socket
import uuid

import torch
import torch.distributed as dist

from . import shm
from .base import Transport


def local_transports(world: int) -> list[Transport]:
    """The K in-process transports of a debug run (rank order)."""
    from .local import LocalHub
    return LocalHub(world).transports()


def process_transport(timeout_s: float, device: torch.device | str = "cpu", reduce: str = "auto") -> Transport:
    """This process's transport; torch.distributed must be initialised (a collective: every rank)."""
    from .backend import Backend, BackendMessages, BackendSum
    from .process import ProcessTransport
    from .shm_messages import MailboxMessages
    from .shm_sums import CheckedSum, FlagsSum

    backend = Backend(timeout_s)
    device = torch.device(device)
    messages, sums = BackendMessages(backend, device), BackendSum(backend, device)
    how = _shared_memory(device, reduce, backend.rank, backend.world)
    if how is None:
        return ProcessTransport(backend, messages, sums)
    token, pids = how
    strict = reduce == "shared-memory"
    slots = shm.SharedSlots(backend.rank, backend.world, token, backend.barrier)
    if not shm.ordered_stores():
        return ProcessTransport(backend, messages, CheckedSum(backend.rank, backend.world, slots, sums, strict))
    # x86: the sums' barrier is the slots' flags, and the messages go through mailboxes too:
    # no backend thread takes part in a tick (issue 13; docs/performance.md)
    return ProcessTransport(backend, MailboxMessages(backend.rank, token, pids, timeout_s, messages, strict),
                            FlagsSum(backend.rank, backend.world, slots, sums, strict, pids, timeout_s))


def _shared_memory(device: torch.device, reduce: str, rank: int, world: int) -> tuple[str, list] | None:
    """``(token, pids)`` for the shared-memory paths when ``reduce`` asks for them and every
    worker can map them (a name for the run's files and each worker's process id), else ``None``:
    the backend's paths. A collective: every rank calls it at the same point."""
    if reduce not in ("auto", "shared-memory", "backend"):
        raise ValueError(f"reduce={reduce!r}: expected 'auto', 'shared-memory' or 'backend'")
    if reduce == "backend" or world == 1:
        return None
    everyone = [None] * world
    dist.all_gather_object(everyone, (socket.gethostname(), shm.available(), device.type, uuid.uuid4().hex[:12],
                                      os.getpid()))
    token, pids = everyone[0][3], [e[4] for e in everyone]
    if not all(shm.alive(p) for p in pids):  # another PID namespace: rely on the timeout alone
        pids = [None] * world
    why = ""
    if any(e[2] != "cpu" for e in everyone):
        why = "the gradients are on a GPU (the backend, NCCL, sums them there)"
    elif not all(e[1] for e in everyone):
        why = "no writable " + shm.SHM_DIR + " on " + ", ".join(
            f"worker {r} ({e[0]})" for r, e in enumerate(everyone) if not e[1])
    elif not all(_see_one_file(token, rank, world)):
        why = "the workers do not share one host's memory: " + ", ".join(
            f"worker {r} on {e[0]}" for r, e in enumerate(everyone))
    if why:
        if reduce == "shared-memory":
            raise ValueError(f"--reduce shared-memory: {why}; use --reduce auto or backend")
        return None
    return token, pids


def _see_one_file(token: str, rank: int, world: int) -> list:
    """Whether each worker sees the file worker 0 writes in /dev/shm: one host, really (containers
    may share a hostname, not /dev/shm)."""
    probe = os.path.join(shm.SHM_DIR, f"dni_dist_{token}_probe")
    if rank == 0:
        try:
            with open(probe, "w") as f:
                f.write(token)
        except OSError:  # then no one sees it: the backend sums
            pass
    dist.barrier()
    seen = [None] * world
    dist.all_gather_object(seen, shm.visible(probe, token))
    if rank == 0 and os.path.exists(probe):
        os.unlink(probe)
    return seen
