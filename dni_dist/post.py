"""A few integers on their way from the device to the host, posted one tick before the host reads
them, so the read never waits for the device (issue 28, goal 1): the engine's divergence window
(``Worker._check_divergence``), which is therefore judged as it stood a tick earlier. (Round 15 posted
the synthesizer's gate the same way; the one-chunk lag solved fewer held-out seeds, so the gate is
read directly.)"""
from __future__ import annotations

import torch


class Post:
    """Integers copied from the device to the host one tick before the host reads them. On a GPU the
    copy goes to pinned memory without waiting and an event marks its end; the read waits on that
    event, which the device passed a tick ago unless the host runs more than a chunk ahead of it.
    On the CPU the copy is a copy. Nothing posted yet (a check at the first tick): the read takes
    the device's value at once."""

    waits = 0  # reads (all posts) that found their copy unfinished: the host was over a tick ahead of the device

    def __init__(self):
        self._host: torch.Tensor | None = None
        self._event = None
        self._sent = False

    def send(self, values: torch.Tensor) -> None:
        cuda = values.device.type == "cuda"
        values = values.to(torch.int64)  # on the device: the copy below is a plain transfer
        if self._host is None or self._host.shape != values.shape:
            self._host = torch.empty(values.shape, dtype=torch.int64, pin_memory=cuda)
        self._host.copy_(values, non_blocking=cuda)
        if cuda:
            self._event = self._event or torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(values.device))
        self._sent = True

    def take(self, read_now) -> list[int]:
        """The posted values (consumed), else ``read_now()``'s, read from the device."""
        if not self._sent:
            return [int(v) for v in read_now().tolist()]
        self._sent = False
        return self._read()

    def _read(self) -> list[int]:
        if self._event is not None:
            if not self._event.query():
                Post.waits += 1
            self._event.synchronize()
        return [int(v) for v in self._host.tolist()]
