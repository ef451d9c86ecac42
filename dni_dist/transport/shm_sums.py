"""Gradient sums through :mod:`.shm`'s slots, for workers on one host and on the CPU.

The factory picks one of two paths, by how the workers learn that every buffer is written:

- :class:`FlagsSum` where stores become visible in program order (x86): each worker's flag
  says so, and the sum is a reduce-scatter and an all-gather in the slots (issue 28): no thread
  of any other process takes part in a tick.
- :class:`CheckedSum` elsewhere: a 3-value all-reduce over the backend is the barrier, and
  each worker adds all K buffers itself.

Both check that every worker summed a buffer of the same size, in the same order, and add in
rank order: debug mode's bits for any K. Where /dev/shm has no room for the slots
(:class:`.shm.NoSpace`, every worker at the same sum) they fall back together to the backend's
all-reduce, with a warning (a ``ValueError`` under ``--reduce shared-memory``).
"""
from __future__ import annotations

import warnings

import torch

from . import shm
from .base import MessageError


class _SlotsSum:
    """What both paths share: writing into the slots, and the fallback to the backend's sum.

    Args:
        rank, world: this worker and the number of workers (all on this host).
        slots: the shared slots (made by the factory; mapped at the first sum).
        fallback: the backend's sum (:class:`.backend.BackendSum`), for no room in /dev/shm.
        strict: ``--reduce shared-memory``: no room is an error, not a warning.
    """

    def __init__(self, rank: int, world: int, slots: shm.SharedSlots, fallback, strict: bool):
        self.rank, self.world, self.slots, self.fallback, self.strict = rank, world, slots, fallback, strict

    def start(self, flat: torch.Tensor):
        if self.slots is None:
            return self.fallback.start(flat)
        try:
            seq, n = self.slots.write(flat)
        except shm.SizeMismatch as e:
            raise MessageError(str(e)) from None
        except shm.NoSpace as e:  # every worker gets here at the same sum: they fall back together
            if self.strict:
                raise ValueError(f"--reduce shared-memory: {e}; give the host (or container: docker run "
                                 "--shm-size) more shared memory, or use --reduce auto or backend") from None
            warnings.warn(f"dni_dist: {e}; summing gradients with the backend's all-reduce instead", RuntimeWarning)
            self.slots = None
            return self.fallback.start(flat)
        return self._handle(seq, n)

    def _handle(self, seq: int, n: int):
        raise NotImplementedError

    def _disagree(self, seq: int, n: int, what: str) -> MessageError:
        return MessageError(f"worker {self.rank}: the workers' gradient sums disagree (sum {seq} of {n} values "
                            f"here; {what}): every worker must sum buffers of the same size in the same order")

    def close(self) -> None:
        self.slots = None


class CheckedSum(_SlotsSum):
    """Slots with a 3-value all-reduce as each sum's barrier (stores may be seen out of order)."""

    def _handle(self, seq: int, n: int) -> "CheckedHandle":
        check = torch.tensor([1, n, seq], dtype=torch.int64)  # summed: [K, K n, K seq] when all agree
        return CheckedHandle(self, seq, n, self.fallback.start(check))


class CheckedHandle:
    def __init__(self, owner: CheckedSum, seq: int, n: int, check):
        self.owner, self.seq, self.n, self.check = owner, seq, n, check

    def finish(self) -> torch.Tensor:
        o, seq, n = self.owner, self.seq, self.n
        got = self.check.finish().tolist()
        if got != [o.world, o.world * n, o.world * seq]:
            raise o._disagree(seq, n, f"summed over the workers: count, sizes, sequence numbers = {got}")
        return o.slots.total(seq, n)


class FlagsSum(_SlotsSum):
    """Slots with each worker's flag as the barrier (x86), summed as a reduce-scatter and an all-gather.

    Args (beyond :class:`_SlotsSum`'s): pids: each worker's process id, to stop waiting as
    soon as one exits (``None``: unknown); timeout_s: how long a wait for the others lasts.
    """

    def __init__(self, rank: int, world: int, slots: shm.SharedSlots, fallback, strict: bool, pids: list,
                 timeout_s: float):
        super().__init__(rank, world, slots, fallback, strict)
        self.pids, self.timeout_s = pids, timeout_s

    def _handle(self, seq: int, n: int) -> "FlagsHandle":
        return FlagsHandle(self, seq, n)

    def wait(self, ready, seq: int, what: str, late) -> None:
        """Poll ``ready()``; on a timeout name the workers ``late()`` lists, on an exit the one gone."""
        limit = self.timeout_s
        try:
            shm.poll(ready, limit, lambda: all(shm.alive(p) for p in self.pids), what, "a peer")
        except TimeoutError:
            raise TimeoutError(f"worker {self.rank}: the gradient sum {seq} did not complete within {limit:g}s: "
                               f"{late()}") from None
        except ConnectionError:
            gone = ", ".join(f"worker {k}" for k, p in enumerate(self.pids) if not shm.alive(p))
            raise ConnectionError(f"worker {self.rank}: {gone or 'a worker'} exited during gradient sum {seq} (its "
                                  "own error names the cause)") from None


class FlagsHandle:
    def __init__(self, owner: FlagsSum, seq: int, n: int):
        self.owner, self.seq, self.n = owner, seq, n

    def finish(self) -> torch.Tensor:
        o, seq, n = self.owner, self.seq, self.n
        slots = o.slots
        names = lambda ranks: ", ".join(f"worker {k}" for k in ranks)  # noqa: E731
        o.wait(lambda: slots.arrived(seq), seq, "the gradient sum (every worker takes part)",
               lambda: f"{names(slots.behind(seq))} never reached it (stopped, hung, or much slower than the others)")
        sizes = slots.sizes(seq)
        if sizes != [n] * o.world:
            raise o._disagree(seq, n, f"each worker's size: {sizes}")
        slots.reduce_slice(seq, n)  # reduce-scatter: this worker's 1/K of every buffer, in rank order
        o.wait(lambda: slots.reduced(seq), seq, "the gradient sum's other slices",
               lambda: f"{names(slots.not_reduced(seq))} never reached it (its slice was not added: stopped, hung, "
                       "or much slower than the others)")
        return slots.result(seq, n)  # all-gather: the whole sum
