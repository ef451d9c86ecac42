"""torch.distributed transport: gloo on CPU, NCCL on GPU.

Each message is a fixed-size int64 header (kind, batch, chunk, dtype, shapes, payload size)
followed by one contiguous payload, sent with non-blocking ``isend`` on a process group of its
own (states forward, stream carries from the last worker to the first), so no message queues
behind the all-reduce on the default group. The receiver checks the header, and the
payload size it declares, before it posts the receive: a wrong sequence number, shape, dtype or
size raises :class:`MessageError` naming the sender; nothing is truncated. The payload ends in a
sentinel the receiver checks, so a short payload is an error, never uninitialised memory. Every
wait has a timeout and names the peer it waits for.

Where the sums go through shared memory (below) on x86, the messages do too, through
:mod:`.mailbox`'s rings, with the same header, checks and errors (the point-to-point group then
carries nothing), and each sum's barrier is :mod:`.shm`'s flags instead of an all-reduce: no gloo
thread takes part in a tick (issue 13; docs/performance.md). ``reduce="backend"`` turns all of it off.

Gradient sums: the backend's all-reduce, or (``reduce="auto"`` when every worker is on this host
and on the CPU, or ``"shared-memory"``) :mod:`.shm`'s slots with a barrier (the flags, or
elsewhere a 3-value all-reduce) that also checks that every worker summed a buffer of the same
size, in the same order.
"""
from __future__ import annotations

import datetime
import os
import socket
import uuid
import warnings

import torch
import torch.distributed as dist

from . import mailbox, shm
from .base import Message, MessageError

KINDS = {"state": 1, "carry": 3, "target": 4}
SENTINEL = 8191.0  # exact in every float dtype we send
DTYPES = {torch.float32: 1, torch.float64: 2, torch.float16: 3, torch.bfloat16: 4}
HEADER = 16  # int64 slots: magic, kind, batch, chunk, dtype, payload size, ntensors, (ndim, dims...) packed


def _numel(m: Message) -> int:
    return sum(int(torch.Size(s).numel()) for s in m.shapes)


def _encode(m: Message) -> torch.Tensor:
    vals = [0x444E49, KINDS[m.kind], m.batch, m.chunk, DTYPES[m.dtype], _numel(m) + 1, len(m.shapes)]
    for s in m.shapes:
        vals += [len(s), *s]
    if len(vals) > HEADER:
        raise ValueError(f"message header needs {len(vals)} slots; at most {HEADER}")
    return torch.tensor(vals + [0] * (HEADER - len(vals)), dtype=torch.int64)


def _decode(h: torch.Tensor) -> tuple[Message, int]:
    v = h.tolist()
    if v[0] != 0x444E49:
        raise MessageError(f"received a header without the dni_dist magic number: {v[:6]}")
    kind = {k: n for n, k in KINDS.items()}.get(v[1], f"unknown({v[1]})")
    dtype = {k: d for d, k in DTYPES.items()}.get(v[4], None)
    shapes, i = [], 7
    for _ in range(min(max(v[6], 0), HEADER)):
        nd = v[i] if i < HEADER else 0
        shapes.append(tuple(v[i + 1:i + 1 + nd]))
        i += 1 + nd
    return Message(kind, v[2], v[3], tuple(shapes), dtype), v[5]


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` still runs (an exited one not yet reaped, a zombie, counts as gone)."""
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


class TorchDistTransport:
    """Transport over an initialised default process group."""

    def __init__(self, timeout_s: float, device: torch.device | str = "cpu", reduce: str = "auto"):
        if not dist.is_initialized():
            raise RuntimeError("TorchDistTransport needs torch.distributed initialised (init_process_group)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.device = torch.device(device)
        # point-to-point messages on a group of their own, so they never queue behind the all-reduce
        # on the default group (creating a group is a collective call: all ranks)
        self.group = dist.new_group(timeout=self.timeout)
        self._pending: list = []
        self._collectives = 0
        try:  # where a rank whose collective timed out says so, so that the message can name who is stuck
            self._store = dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - a private API: without it the message just names no one
            self._store = None
        self.reduce = reduce
        self._pids: list = []
        self.slots = self._shared_slots(reduce)  # None: the backend's all-reduce
        # sums in shared memory on x86: their barrier (shm's flags) and the messages (.mailbox) too
        self.shm_sync = self.slots is not None and shm.ordered_stores()
        self._boxes: dict = {}
        self._over_backend: set = set()  # (src, dst) directions whose ring found no room in /dev/shm

    def _shared_slots(self, reduce: str):
        """Shared-memory slots when ``reduce`` asks for them and every worker can map them."""
        if reduce not in ("auto", "shared-memory", "backend"):
            raise ValueError(f"reduce={reduce!r}: expected 'auto', 'shared-memory' or 'backend'")
        if reduce == "backend" or self.world == 1:
            return None
        me = (socket.gethostname(), shm.available(), self.device.type, uuid.uuid4().hex[:12], os.getpid())
        everyone = [None] * self.world
        dist.all_gather_object(everyone, me)  # all ranks build their transport at the same point
        token = everyone[0][3]
        self._token, self._pids = token, [e[4] for e in everyone]
        if not all(_alive(p) for p in self._pids):  # another PID namespace: rely on the timeout alone
            self._pids = [None] * self.world
        why = ""
        if any(e[2] != "cpu" for e in everyone):
            why = "the gradients are on a GPU (the backend, NCCL, sums them there)"
        elif not all(e[1] for e in everyone):
            why = "no writable " + shm.SHM_DIR + " on " + ", ".join(
                f"worker {r} ({e[0]})" for r, e in enumerate(everyone) if not e[1])
        else:  # one host, really: worker 0's file is visible to all (containers may share a hostname, not /dev/shm)
            seen = [None] * self.world
            probe = os.path.join(shm.SHM_DIR, f"dni_dist_{token}_probe")
            if self.rank == 0:
                try:
                    with open(probe, "w") as f:
                        f.write(token)
                except OSError:  # then no one sees it: the backend sums
                    pass
            dist.barrier()
            dist.all_gather_object(seen, shm.visible(probe, token))
            if self.rank == 0 and os.path.exists(probe):
                os.unlink(probe)
            if not all(seen):
                why = "the workers do not share one host's memory: " + ", ".join(
                    f"worker {r} on {e[0]}" for r, e in enumerate(everyone))
        if why:
            if reduce == "shared-memory":
                raise ValueError(f"--reduce shared-memory: {why}; use --reduce auto or backend")
            return None
        return shm.SharedSlots(self.rank, self.world, token, self._barrier)

    def _barrier(self, values: torch.Tensor) -> torch.Tensor:
        self._wait(dist.all_reduce(values, async_op=True), "the shared-memory sum's set-up (every worker takes part)",
                   None)
        return values

    def _laggards(self) -> str:
        """After an all-reduce timed out: say so in the store, wait briefly for the others to say
        the same, and name the ranks that did not (they never reached the collective)."""
        if self._store is None:
            return ""
        key = f"dni_dist/timed-out/{self._collectives}"
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

    def _box(self, src: int, dst: int) -> mailbox.Mailbox:
        key = (src, dst)
        if key not in self._boxes:
            peer = dst if src == self.rank else src
            pid = self._pids[peer]
            self._boxes[key] = mailbox.Mailbox(os.path.join(shm.SHM_DIR, f"dni_dist_{self._token}_mail_{src}_{dst}"),
                                               HEADER, self.timeout.total_seconds(), lambda: _alive(pid),
                                               f"worker {peer}")
        return self._boxes[key]

    def send(self, dst: int, header: Message, tensors: list) -> None:
        group = self.group
        parts = [t.detach().reshape(-1) for t in tensors]
        payload = torch.cat(parts + [parts[0].new_full((1,), SENTINEL)]).to(self.device)
        h = _encode(header).to(self.device)
        if self.shm_sync and (self.rank, dst) not in self._over_backend:
            try:
                self._box(self.rank, dst).post(h, payload)
                return
            except (TimeoutError, ConnectionError) as e:
                raise type(e)(f"worker {self.rank}: {e}") from None
            except mailbox.UseBackend as e:  # as the sum does: go on over the backend, with a warning
                self._use_backend(self.rank, dst, e)
        for buf in (h, payload):  # the buffer stays referenced until its send completes
            self._pending.append((dist.isend(buf, dst, group=group), buf))
        while len(self._pending) > 16:  # bound the sends in flight
            work, _ = self._pending.pop(0)
            self._wait(work, f"a send to worker {dst}", dst)

    def recv(self, src: int, expected: Message) -> list:
        group = self.group
        raw = None
        if self.shm_sync and (src, self.rank) not in self._over_backend:
            try:
                h, raw = self._box(src, self.rank).take()
            except (TimeoutError, ConnectionError) as e:
                raise type(e)(f"worker {self.rank}: waiting for {expected.describe()}: {e}") from None
            except mailbox.UseBackend as e:
                self._use_backend(src, self.rank, e)
        if raw is None:
            h = torch.empty(HEADER, dtype=torch.int64, device=self.device)
            self._wait(dist.irecv(h, src, group=group), f"the header of {expected.describe()} from worker {src}", src)
        got, declared = _decode(h.cpu())
        expected.check(got, src)
        sizes = [int(torch.Size(s).numel()) for s in expected.shapes]
        if declared != sum(sizes) + 1:
            raise MessageError(f"from worker {src}: expected {expected.describe()} ({sum(sizes) + 1} values with "
                               f"the end marker), but the header declares {declared} values")
        if raw is not None:
            nbytes = (sum(sizes) + 1) * torch.empty((), dtype=expected.dtype).element_size()
            if raw.numel() != nbytes:
                raise MessageError(f"from worker {src}: {expected.describe()} arrived short or corrupt: "
                                   f"{raw.numel()} bytes where its header declares {nbytes}")
            payload = raw.view(expected.dtype)
        else:
            payload = torch.full((sum(sizes) + 1,), float("nan"), dtype=expected.dtype, device=self.device)
            self._wait(dist.irecv(payload, src, group=group), f"{expected.describe()} from worker {src}", src)
        if float(payload[-1]) != SENTINEL:
            raise MessageError(f"from worker {src}: {expected.describe()} arrived short or corrupt (its end marker "
                               "is missing): fewer values were sent than its header declares")
        out, start = [], 0
        for s, n in zip(expected.shapes, sizes):
            out.append(payload[start:start + n].view(s))
            start += n
        return out

    def _use_backend(self, src: int, dst: int, e: OSError) -> None:
        """Messages from ``src`` to ``dst`` continue over the backend (no room in /dev/shm)."""
        if self.reduce == "shared-memory":
            raise ValueError(f"--reduce shared-memory: {e}; give the host (or container: docker run --shm-size) "
                             "more shared memory, or use --reduce auto or backend") from None
        self._over_backend.add((src, dst))
        if src == self.rank:
            warnings.warn(f"dni_dist: {e}; sending to worker {dst} with the backend instead", RuntimeWarning)

    def all_reduce_sum(self, flat: torch.Tensor) -> torch.Tensor:
        return self.finish(self.start_all_reduce(flat))

    def start_all_reduce(self, flat: torch.Tensor):
        """Begin summing ``flat`` over all workers; :meth:`finish` waits for it."""
        if self.slots is not None:
            try:
                seq, n = self.slots.write(flat)
            except shm.SizeMismatch as e:
                raise MessageError(str(e)) from None
            except shm.NoSpace as e:  # every worker gets here at the same sum: they fall back together
                if self.reduce == "shared-memory":
                    raise ValueError(f"--reduce shared-memory: {e}; give the host (or container: docker run "
                                     "--shm-size) more shared memory, or use --reduce auto or backend") from None
                warnings.warn(f"dni_dist: {e}; summing gradients with the backend's all-reduce instead",
                              RuntimeWarning)
                self.slots = None
                return self.start_all_reduce(flat)
            if self.shm_sync:
                return "flags", None, None, (seq, n)
            check = torch.tensor([1, n, seq], dtype=torch.int64)  # summed: [K, K n, K seq] when all agree
            return "shared-memory", dist.all_reduce(check, async_op=True), check, (seq, n)
        buf = flat.to(self.device)
        return "backend", dist.all_reduce(buf, op=dist.ReduceOp.SUM, async_op=True), buf, flat.device

    def finish(self, handle) -> torch.Tensor:
        how, work, buf, where = handle
        self._collectives += 1
        if how == "flags":
            return self._finish_flags(*where)
        self._wait(work, "the gradient all-reduce (every worker takes part)", None)
        if how == "backend":
            return buf.to(where)
        seq, n = where
        if buf.tolist() != [self.world, self.world * n, self.world * seq]:
            raise MessageError(f"worker {self.rank}: the workers' gradient sums disagree (sum {seq} of {n} values "
                               f"here; summed over the workers: count, sizes, sequence numbers = {buf.tolist()}): "
                               "every worker must sum buffers of the same size in the same order")
        return self.slots.total(seq, n)

    def _finish_flags(self, seq: int, n: int) -> torch.Tensor:
        slots, limit = self.slots, self.timeout.total_seconds()
        alive = lambda: all(_alive(p) for p in self._pids)  # noqa: E731
        try:
            shm.poll(lambda: slots.arrived(seq), limit, alive, "the gradient sum (every worker takes part)",
                     "a peer")
        except TimeoutError:
            late = ", ".join(f"worker {k}" for k in slots.behind(seq))
            raise TimeoutError(f"worker {self.rank}: the gradient sum {seq} did not complete within {limit:g}s: "
                               f"{late} never reached it (stopped, hung, or much slower than the others)") from None
        except ConnectionError:
            gone = ", ".join(f"worker {k}" for k, p in enumerate(self._pids) if not _alive(p))
            raise ConnectionError(f"worker {self.rank}: {gone or 'a worker'} exited during gradient sum {seq} (its "
                                  "own error names the cause)") from None
        sizes = slots.sizes(seq)
        if sizes != [n] * self.world:
            raise MessageError(f"worker {self.rank}: the workers' gradient sums disagree (sum {seq} of {n} values "
                               f"here; each worker's size: {sizes}): every worker must sum buffers of the same size "
                               "in the same order")
        slots.reduce_slice(seq, n)  # reduce-scatter: this worker's 1/K of every buffer, in rank order
        try:
            shm.poll(lambda: slots.reduced(seq), limit, alive, "the gradient sum's other slices", "a peer")
        except TimeoutError:
            late = ", ".join(f"worker {k}" for k in slots.not_reduced(seq))
            raise TimeoutError(f"worker {self.rank}: the gradient sum {seq} did not complete within {limit:g}s: "
                               f"{late} never reached it (its slice was not added: stopped, hung, or much slower "
                               "than the others)") from None
        except ConnectionError:
            gone = ", ".join(f"worker {k}" for k, p in enumerate(self._pids) if not _alive(p))
            raise ConnectionError(f"worker {self.rank}: {gone or 'a worker'} exited during gradient sum {seq} (its "
                                  "own error names the cause)") from None
        return slots.result(seq, n)  # all-gather: the whole sum

    def _wait(self, work, what: str, peer: int | None) -> None:
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
                late = self._laggards() if peer is None else ""
                raise TimeoutError(f"worker {self.rank}: waited {limit:.0f}s for {what}; {who} sent nothing "
                                   f"(stopped, hung, or behind){late}: {text.splitlines()[0][:200]}") from e
            raise RuntimeError(f"worker {self.rank}: waiting for {what} failed: {text.splitlines()[0][:300]}") from e
        if ok is False:
            late = self._laggards() if peer is None else ""
            raise TimeoutError(f"worker {self.rank}: {what} did not arrive within {limit:.0f}s{late}")

    def close(self) -> None:
        self.slots = None
        for box in self._boxes.values():
            box.close()
        pending, self._pending = self._pending, []
        for work, _ in pending:
            self._wait(work, "a send to complete", None)
