"""Gradient sums through shared memory, for workers on one host and on the CPU.

gloo's all-reduce moves each buffer through loopback TCP: kernel copies and gloo's threads, CPU
time taken from the workers' own compute when a host has about as many cores as workers (issue
13: on 2 cores, K=2 exact mode was faster in 6 of 8 back-to-back pairs with the sum below, median
+11%; docs/performance.md). Workers on one host can
instead each write their buffer into a slot of one file in ``/dev/shm`` that all of them map,
meet at a barrier (the transport's, with its timeout), and sum them as a reduce-scatter and an
all-gather (issue 28): worker r adds its 1/K slice of every worker's buffer, in rank order, into a
shared result; after a second barrier every worker copies the whole result. Each worker reads
about 2n values per sum instead of K n. Every element is still added in rank order: the same bits
on every worker, and the same sum as debug mode's for any K (gloo's ring adds in another order
for K > 2). Where the barrier is the caller's (not x86), each worker adds all K buffers itself
(:meth:`SharedSlots.total`): one barrier per sum.

Two sets of slots alternate, so a worker may write its next buffer while a slower peer still
reads the last sum: sum ``s`` uses set ``s % 2``, and a worker reaching sum ``s`` has passed the
barrier of sum ``s - 1``, which every peer joins only after it finished reading sum ``s - 2``.
That argument needs one sum in flight per worker at a time (start, finish, start, ...), which
:class:`SharedSlots` enforces.

The barrier of each sum: on x86 (stores seen in program order) each worker publishes, after its
slot, how many sums it has written and the size of this one in a flag area of the same file, and
a worker's sum is ready once every flag has passed it (:meth:`SharedSlots.arrived`, polled with
:func:`poll`: no thread of any other process is involved). Elsewhere the caller's barrier, a
3-value all-reduce. A peer can be one sum ahead, never two, so each flag keeps the sizes of both sets.

No torch.distributed here: the caller supplies the set-up barrier.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Callable

import torch

SHM_DIR = "/dev/shm"
FLAGS = 8  # int64 per worker in a segment's flag area (one 64-byte cache line each)


def ordered_stores() -> bool:
    """Whether stores become visible to other processes in program order here (x86-64): what the
    flag barrier below and :mod:`.mailbox` rely on."""
    return platform.machine().lower() in ("x86_64", "amd64")


def poll(ready: Callable[[], bool], timeout_s: float, alive: Callable[[], bool], what: str, peer: str) -> None:
    """Wait until ``ready()``, yielding the core between checks (the peer may need it to make
    progress); a ``TimeoutError`` after ``timeout_s``, a :class:`PeerGone` as soon as ``alive()``
    (checked about five times a second) says the peer exited. ``what``/``peer`` name them."""
    start = checked = time.monotonic()
    nap = 0.0
    while not ready():
        now = time.monotonic()
        if now - start > timeout_s:
            raise TimeoutError(f"waited {timeout_s:g}s for {what}; {peer} is stopped, hung, or behind")
        if now - checked > 0.2:
            checked = now
            if not alive():
                raise PeerGone(f"{peer} exited while this worker waited for {what} (its own error names the cause)")
        time.sleep(nap)
        nap = min(2e-4, nap + 2e-5)


class PeerGone(ConnectionError):
    """The peer process exited while this worker waited for it."""


def alive(pid: int | None) -> bool:
    """Whether process ``pid`` still runs (an exited one not yet reaped, a zombie, counts as gone;
    ``None``, a pid from another PID namespace, counts as running)."""
    if pid is None:
        return True
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
        except FileNotFoundError:
            return False
        except (OSError, IndexError):  # unreadable: ask the kernel whether the pid exists
            pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    return True


def available() -> bool:
    """Whether this host has a shared-memory filesystem to map slots from (Linux)."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


class SizeMismatch(ValueError):
    """The workers asked to sum buffers of different sizes."""


class NoSpace(OSError):
    """/dev/shm has no room for the slots (every worker raises it at the same sum)."""


def visible(path: str, token: str) -> bool:
    """Whether the file another worker wrote at ``path`` holding ``token`` is visible here."""
    try:
        with open(path) as f:
            return f.read() == token
    except OSError:
        return False


class SharedSlots:
    """K slots of one shared file, two sets, grown on demand.

    Args:
        rank, world: this worker and the number of workers (all on this host).
        token: a name every worker of the run agrees on and no other run uses.
        barrier: ``barrier(values)`` sums a small int64 tensor over the workers and returns the
            sum once all of them called it (a collective with a timeout); used when a segment is
            created and, by the caller, at every sum.
    """

    def __init__(self, rank: int, world: int, token: str, barrier: Callable[[torch.Tensor], torch.Tensor]):
        self.rank, self.world, self.token, self.barrier = rank, world, token, barrier
        self._slots: torch.Tensor | None = None  # (2, world, capacity)
        self._result: torch.Tensor | None = None  # (2, capacity): each set's sum, a slice per worker
        self._flags: torch.Tensor | None = None  # (world, FLAGS) int64: [sums written, sizes of the two
        #                                          sets, slices reduced]
        self._made = 0                           # segments created so far (names them)
        self._seq = 0                            # sums started so far
        self._in_flight = False

    def write(self, flat: torch.Tensor) -> tuple[int, int]:
        """Copy ``flat`` into this worker's slot of the next set; returns ``(sum number, numel)``
        for :meth:`total` once every worker has written (after the caller's barrier)."""
        if self._in_flight:
            raise RuntimeError("shared-memory sum: a second sum was started before the first one finished "
                               "(one sum in flight per worker)")
        if flat.device.type != "cpu":
            raise ValueError(f"shared-memory sum: the buffer is on {flat.device}; it sums CPU tensors only")
        flat = flat.detach().reshape(-1)
        n = flat.numel()
        s = self._slots
        if s is None or s.shape[2] < n or s.dtype != flat.dtype:
            self._map(n, flat.dtype)
        self._slots[self._seq % 2, self.rank, :n].copy_(flat)
        self._flags[self.rank, 1 + self._seq % 2] = n  # a peer may be one sum ahead, never two
        self._flags[self.rank, 0] = self._seq + 1  # last: this worker's slot is complete
        self._seq += 1
        self._in_flight = True
        return self._seq - 1, n

    def arrived(self, seq: int) -> bool:
        """Whether every worker has written its buffer for sum ``seq`` (only where :func:`ordered_stores`)."""
        return bool((self._flags[:, 0] > seq).all())

    def behind(self, seq: int) -> list[int]:
        """The workers that have not written sum ``seq`` yet."""
        return [k for k in range(self.world) if int(self._flags[k, 0]) <= seq]

    def sizes(self, seq: int) -> list[int]:
        """Each worker's size for sum ``seq`` (after :meth:`arrived`)."""
        return self._flags[:, 1 + seq % 2].tolist()

    def _bounds(self, n: int, rank: int) -> tuple[int, int]:
        """The slice of an ``n``-value buffer that ``rank`` reduces: K contiguous parts, cut at
        multiples of 16 values (64 bytes of float32: no two workers write one cache line)."""
        def cut(r: int) -> int:
            return n if r == self.world else (r * n // self.world) // 16 * 16
        return cut(rank), cut(rank + 1)

    def reduce_slice(self, seq: int, n: int) -> None:
        """Add this worker's slice of every worker's buffer for sum ``seq`` in rank order into the
        shared result, then say so (after :meth:`arrived`; the result is whole once :meth:`reduced`)."""
        lo, hi = self._bounds(n, self.rank)
        if hi > lo:
            slots, out = self._slots[seq % 2, :, lo:hi], self._result[seq % 2, lo:hi]
            if self.world == 1:
                out.copy_(slots[0])
            else:
                torch.add(slots[0], slots[1], out=out)
            for k in range(2, self.world):
                out.add_(slots[k])
        self._flags[self.rank, 3] = seq + 1  # last: this worker's slice of the result is complete

    def reduced(self, seq: int) -> bool:
        """Whether every worker has added its slice for sum ``seq``."""
        return bool((self._flags[:, 3] > seq).all())

    def not_reduced(self, seq: int) -> list[int]:
        """The workers that have not added their slice of sum ``seq`` yet."""
        return [k for k in range(self.world) if int(self._flags[k, 3]) <= seq]

    def result(self, seq: int, n: int) -> torch.Tensor:
        """The whole sum ``seq`` (after :meth:`reduced`), copied out (a new tensor)."""
        out = self._result[seq % 2, :n].clone()
        self._in_flight = False
        return out

    def total(self, seq: int, n: int) -> torch.Tensor:
        """The sum of every worker's buffer for sum ``seq``, added in rank order (a new tensor)."""
        slots = self._slots[seq % 2, :, :n]
        out = slots[0].clone() if self.world == 1 else torch.add(slots[0], slots[1])
        for k in range(2, self.world):
            out.add_(slots[k])
        self._in_flight = False
        return out

    def _map(self, n: int, dtype: torch.dtype) -> None:
        """Create and map a segment for ``n`` values (a collective: every worker grows at the
        same sum, their buffers having the same size). Worker 0 reserves the file's space first
        (``posix_fallocate``: a full /dev/shm, e.g. Docker's 64 MB default, is then a clean error
        rather than a SIGBUS on first touch). The name is unlinked once all mapped it, so nothing
        is left in /dev/shm when a worker dies later."""
        self._made += 1
        path = os.path.join(SHM_DIR, f"dni_dist_{self.token}_{self._made}")
        size = 2 * self.world * n + 2 * n  # two sets of K slots, and the two sets' results
        flag_bytes = self.world * FLAGS * 8
        nbytes = flag_bytes + size * torch.empty((), dtype=dtype).element_size()
        ok, why = 0, ""
        if self.rank == 0:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                try:
                    os.posix_fallocate(fd, 0, nbytes)
                finally:
                    os.close(fd)
                ok = 1
            except OSError as e:
                why = f": {e}"
                if os.path.exists(path):
                    os.unlink(path)
        agreed = self.barrier(torch.tensor([1, n, ok], dtype=torch.int64)).tolist()  # the file exists, reserved
        if agreed[:2] != [self.world, self.world * n]:
            if agreed[2] and self.rank == 0:
                os.unlink(path)
            raise SizeMismatch(f"worker {self.rank}: the workers' gradient buffers differ in size ({n} values "
                               f"here, {agreed[1]} summed over {agreed[0]} workers): every worker must sum a "
                               "buffer of the same size")
        if agreed[2] != 1:
            raise NoSpace(f"{nbytes / 2**20:.1f} MiB for {self.world} workers' gradient buffers (two sets) could "
                          f"not be reserved in {SHM_DIR}{why}")
        seg = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
        self.barrier(torch.zeros(3, dtype=torch.int64))  # everyone mapped it
        if self.rank == 0:
            os.unlink(path)
        self._flags = seg[:flag_bytes].view(torch.int64).view(self.world, FLAGS)  # zeros: nothing written here yet
        values = seg[flag_bytes:].view(dtype)
        self._slots = values[:2 * self.world * n].view(2, self.world, n)
        self._result = values[2 * self.world * n:].view(2, n)
