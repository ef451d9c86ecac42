"""A worker's gradient buffer: what one tick hands to the all-reduce, and how a sum is read back.

One flat buffer per tick, ``[model grads | loss, chunks run, chunks skipped | synthesizer grads |
chunks that trained it | evidence]``: the model's step needs the first two parts, the
synthesizer's the last three (with ``sync="exact"`` the two parts are reduced apart). Gradients
accumulate straight into it (every parameter's ``.grad`` is a view of it), so the all-reduce sums
it in place: no copy in, no copy out. Two buffers alternate, so that the one in flight
(``sync="overlap"``, or the synthesizer's part with ``sync="exact"``) is never written.

The K rule lives here (docs/tuning.md, "Workers"): a step sees the mean over the chunks its tick
trained, so :meth:`model_step` divides the summed gradients by the chunks that ran and
:meth:`synth_step` by the chunks that regressed the synthesizer.
"""
from __future__ import annotations

import torch

EVIDENCE = 5  # the synthesizer's evidence (Synthesizer.accumulate), at the end of the buffer
SCALARS = 3  # loss sum, chunks run, chunks skipped: right after the model's gradients
TRAINED = 1  # chunks that regressed the synthesizer this tick: between its gradients and the evidence


def bind(params: list, flat: torch.Tensor) -> None:
    """Make each parameter's ``.grad`` a view of ``flat``, in order."""
    offset = 0
    for p in params:
        k = p.numel()
        p.grad = flat[offset:offset + k].view_as(p)
        offset += k


class GradBuffer:
    def __init__(self, params: list, sparams: list, dtype: torch.dtype, device: torch.device):
        self.params, self.sparams = params, sparams
        self.n_model = sum(p.numel() for p in params)
        self.split = self.n_model + SCALARS  # where the synthesizer's part starts
        self.n_synth = sum(p.numel() for p in sparams)
        size = self.split + self.n_synth + TRAINED + EVIDENCE
        self._bufs = [torch.zeros(size, dtype=dtype, device=device) for _ in range(2)]
        self._cur = 0

    @property
    def current(self) -> torch.Tensor:
        """The buffer this tick writes."""
        return self._bufs[self._cur]

    def start_tick(self) -> None:
        """Zero this tick's buffer and point every ``.grad`` at it."""
        buf = self.current
        buf.zero_()
        bind(self.params, buf[:self.n_model])
        bind(self.sparams, buf[self.split:])

    def model_part(self, loss: float, ran: int, skipped: int) -> torch.Tensor:
        """The model's part with the tick's scalars written: what its all-reduce sums."""
        buf = self.current
        buf[self.n_model:self.split] = torch.tensor([loss, float(ran), float(skipped)], dtype=buf.dtype)
        return buf[:self.split]

    def synth_part(self, evidence: torch.Tensor, trained: bool) -> torch.Tensor:
        """The synthesizer's part with its evidence and whether this worker trained it. Hands the
        buffer out: the next tick writes the other one."""
        buf = self.current
        buf[-EVIDENCE:] = evidence.to(buf.dtype)
        buf[-EVIDENCE - TRAINED] = 1.0 if trained else 0.0
        self._cur ^= 1
        return buf[self.split:]

    def handed_out(self) -> torch.Tensor:
        """The whole buffer :meth:`synth_part` handed out last (``sync="overlap"`` sums it at once)."""
        return self._bufs[self._cur ^ 1]

    def model_step(self, total: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
        """Read a summed model part: ``(mean gradients, loss sum, chunks run, chunks skipped)``; the
        model's ``.grad`` are bound to the mean (the K rule: divided by the chunks that ran)."""
        loss, ran, skipped = total[-SCALARS:].tolist()
        grads = total[:self.n_model]
        if ran > 1:  # the mean over the chunks that ran (data-parallel replicas: as DDP)
            grads.div_(ran)
        bind(self.params, grads)
        return grads, loss, ran, skipped

    def synth_step(self, total: torch.Tensor) -> torch.Tensor:
        """Read a summed synthesizer part: bind its ``.grad`` to the mean over the chunks that
        regressed it (a division by 1 changes no bit) and return the evidence, summed."""
        total[:self.n_synth].div_(total[self.n_synth].clamp(min=1))
        bind(self.sparams, total)
        return total[-EVIDENCE:]

    def rebind_synth(self) -> None:
        """Point the synthesizer's ``.grad`` back at the buffer being written (after a step on a sum)."""
        bind(self.sparams, self.current[self.split:])
