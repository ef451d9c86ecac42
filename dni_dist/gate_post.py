"""The gate's value on its way from the device to the host (``Synthesizer.tick``): posted one tick
before the host reads it, so the read never waits for the device (issue 28, goal 1)."""
from __future__ import annotations

import torch


class GatePost:
    """The gate's ``[open, warmed up]`` copied from the device to the host one tick before the host
    reads it. On a GPU the copy goes to pinned memory without waiting and an event marks its end;
    the read waits on that event, which the device passed a tick ago unless the host runs more
    than a chunk ahead of it. On the CPU the copy is a copy. Nothing posted (the first tick, a
    state saved before posts existed): the read takes the device's value at once."""

    def __init__(self, saved: list[int] | None = None):
        self._saved = saved     # values restored from a checkpoint, taken at the next read
        self._host: torch.Tensor | None = None
        self._event = None
        self._sent = False

    def send(self, flags: torch.Tensor) -> None:
        cuda = flags.device.type == "cuda"
        if self._host is None:
            self._host = torch.empty(2, dtype=torch.int64, pin_memory=cuda)
        self._host.copy_(flags, non_blocking=cuda)
        if cuda:
            self._event = self._event or torch.cuda.Event()
            self._event.record()
        self._saved, self._sent = None, True

    def take(self, read_now) -> list[int]:
        """The posted values (consumed), else ``read_now()``'s, read from the device."""
        if self._saved is not None:
            values, self._saved = self._saved, None
            return values
        if not self._sent:
            return [int(v) for v in read_now().tolist()]
        if self._event is not None:
            self._event.synchronize()
        self._sent = False
        return [int(v) for v in self._host.tolist()]

    def values(self) -> list[int]:
        """What the next read will take, for a checkpoint ([-1, -1]: nothing posted)."""
        if self._saved is not None:
            return list(self._saved)
        if not self._sent:
            return [-1, -1]
        if self._event is not None:
            self._event.synchronize()
        return [int(v) for v in self._host.tolist()]
