"""A worker's gradient buffer: what one tick hands to the all-reduce, and how a sum is read back.

One flat buffer per tick, ``[model grads | loss, chunks run, chunks skipped | synthesizer grads |
chunks that trained it | evidence]``: the model's step needs the first two parts, the
synthesizer's the last three (with ``sync="exact"`` the two parts are reduced apart). Gradients
accumulate straight into it (every parameter's ``.grad`` is a view of it), so the all-reduce sums
it in place: no copy in, no copy out. Two buffers alternate, so that the one in flight
(``sync="overlap"``, or the synthesizer's part with ``sync="exact"``) is never written.

Nothing here reads the device: the tick's scalars arrive as device tensors, a skipped chunk is
masked out on the device, and the divisions below are tensor ops.

The K rule lives here (docs/tuning.md, "Workers"): a step sees the mean over the chunks its tick
trained, so :meth:`GradBuffer.model_step` divides the summed gradients by the chunks that ran and
:meth:`GradBuffer.synth_step` by the chunks that regressed the synthesizer (a division by 1
changes no bit).
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
    """The two alternating flat buffers of one worker, for its model's ``params`` and its
    synthesizer's ``sparams`` (empty without one)."""

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

    def drop_model(self, skipped: torch.Tensor) -> None:
        """Zero the model's gradients where ``skipped`` (a device bool) holds: a chunk with a
        non-finite loss is left out of the sum, as if it never ran."""
        self.current[:self.n_model].masked_fill_(skipped, 0.0)

    def model_part(self, loss, ran, skipped) -> torch.Tensor:
        """The model's part with the tick's scalars written: what its all-reduce sums. ``loss`` is
        a device tensor and ``ran``/``skipped`` device bools once a chunk ran; an idle tick passes
        the numbers 0."""
        buf = self.current
        if torch.is_tensor(loss):
            buf[self.n_model:self.split] = torch.stack([loss, ran.to(loss.dtype),
                                                        skipped.to(loss.dtype)]).to(buf.dtype)
        else:  # an idle tick
            buf[self.n_model:self.split] = 0.0
        return buf[:self.split]

    def synth_part(self, evidence: torch.Tensor | None) -> torch.Tensor:
        """The synthesizer's part with its evidence (None: this worker regressed nothing this tick)
        and whether this worker trained it. Hands the buffer out: the next tick writes the other one."""
        buf = self.current
        if evidence is not None:
            buf[-EVIDENCE:] = evidence.to(buf.dtype)
        else:
            buf[-EVIDENCE:].zero_()
        buf[-EVIDENCE - TRAINED] = 0.0 if evidence is None else 1.0
        self._cur ^= 1
        return buf[self.split:]

    def handed_out(self) -> torch.Tensor:
        """The whole buffer :meth:`synth_part` handed out last (``sync="overlap"`` sums it at once)."""
        return self._bufs[self._cur ^ 1]

    def model_step(self, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read a summed model part: ``(mean gradients, loss sum, chunks run, chunks skipped)``, all
        on the device; the model's ``.grad`` are bound to the mean (the K rule: divided by the
        chunks that ran; data-parallel replicas: as DDP)."""
        grads = total[:self.n_model]
        grads.div_(total[-SCALARS + 1].clamp(min=1))
        loss, ran, skipped = total[-SCALARS:].unbind()
        bind(self.params, grads)
        return grads, loss, ran, skipped

    def synth_step(self, total: torch.Tensor) -> torch.Tensor:
        """Read a summed synthesizer part: bind its ``.grad`` to the mean over the chunks that
        regressed it (the K rule) and return the evidence, summed (on the device). Call
        :meth:`rebind_synth` after the synthesizer's step."""
        total[:self.n_synth].div_(total[self.n_synth].clamp(min=1))
        bind(self.sparams, total)
        return total[-EVIDENCE:]

    def rebind_synth(self) -> None:
        """Point the synthesizer's ``.grad`` back at the buffer being written, so a regression after
        a step on a sum (``sync="exact"`` applies the previous tick's sum between this tick's
        forward and backward) accumulates in the right place."""
        bind(self.sparams, self.current[self.split:])
