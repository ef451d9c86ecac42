"""The in-process transport of debug mode: K workers in one process, mailboxes and a summing hub
(:func:`.factory.local_transports` picks it for every debug run).

The debug runner steps the K workers' tick loops in lockstep (rank order), so every message is
sent before it is received and every all-reduce has all K buffers before anyone finishes it. A
receive that finds no message is a schedule bug and raises at once instead of hanging.
"""
from __future__ import annotations

import collections

import torch

from .base import Message


class LocalHub:
    """What the K :class:`LocalTransport` s of one debug run share."""

    def __init__(self, world: int):
        self.world = world
        self.mail: dict = collections.defaultdict(collections.deque)  # (src, dst, kind) -> messages
        self.rounds: dict = {}     # all-reduce round -> {rank: buffer}
        self.results: dict = {}    # round -> (sum, ranks that took it)

    def transports(self) -> list["LocalTransport"]:
        return [LocalTransport(self, r) for r in range(self.world)]


class LocalTransport:
    def __init__(self, hub: LocalHub, rank: int):
        self.hub, self.rank, self.world = hub, rank, hub.world
        self._round = 0

    def send(self, dst: int, header: Message, tensors: list) -> None:
        self.hub.mail[(self.rank, dst, header.kind)].append((header, [t.detach() for t in tensors]))

    def recv(self, src: int, expected: Message) -> list:
        box = self.hub.mail[(src, self.rank, expected.kind)]
        if not box:
            raise RuntimeError(f"debug transport: worker {self.rank} expects {expected.describe()} from worker "
                               f"{src}, but none was sent (a schedule bug)")
        header, tensors = box.popleft()
        expected.check(header, src)
        return tensors

    def start_all_reduce(self, flat: torch.Tensor):
        r = self._round
        self._round += 1
        self.hub.rounds.setdefault(r, {})[self.rank] = flat
        return r

    def finish(self, r) -> torch.Tensor:
        hub = self.hub
        if r not in hub.results:
            bufs = hub.rounds.pop(r, {})
            if len(bufs) != self.world:
                raise RuntimeError(f"debug transport: all-reduce round {r} has {len(bufs)} of {self.world} buffers")
            total = bufs[0]
            for k in range(1, self.world):  # rank order: what gloo computes for K = 2
                total = total + bufs[k]
            hub.results[r] = (total, set())
        total, took = hub.results[r]
        took.add(self.rank)
        if len(took) == self.world:
            del hub.results[r]
        return total.clone()  # each worker steps from (and may clip) its own copy, as after a real all-reduce

    def all_reduce_sum(self, flat: torch.Tensor) -> torch.Tensor:
        return self.finish(self.start_all_reduce(flat))

    def close(self) -> None:
        pass
