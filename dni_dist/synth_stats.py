"""The statistics of a :class:`dni_dist.Synthesizer` (``synth.stats``): a view, read from the device
when read, and the warnings about non-finite events it gives then. An update never reads them:
they are device counters and running sums the synthesizer writes (its ``_counts`` and ``fit`` buffers,
the tensors of its last update), and host counts of what the seed API saw (its ``_host``).
"""
from __future__ import annotations

import warnings

import torch

# device counters of a Synthesizer (a non-persistent buffer): their index
UPDATES, NONFINITE_PREDICTIONS, NONFINITE_TARGETS, SKIPPED_UPDATES = range(4)


class SynthStats:
    """What a user or a benchmark reads (``synth.stats``): a view, read from the device when an
    attribute is read (one host-device read each), never written by an update.

    Attributes: updates, targets, zero_targets (mid-stream boundaries trained toward zero),
    dropped_ends (sequence ends nothing followed), nonfinite_predictions (replaced by zeros, never
    injected), nonfinite_targets (dropped), skipped_updates (non-finite gradient), last_loss
    (regression loss of the last update), last_target_energy (mean square of its targets),
    skill (fraction of recent target variance explained by the injected direction), gate (what
    the injection is scaled by now, in [0, 1]), correlation (of the centred prediction with its
    target on recent targets).
    """
    FIELDS = ("updates", "targets", "zero_targets", "dropped_ends", "nonfinite_predictions", "nonfinite_targets",
              "skipped_updates", "last_loss", "last_target_energy", "skill", "gate", "correlation")

    def __init__(self, synth):
        self._synth = synth

    def __getattr__(self, name):
        if name in SynthStats.FIELDS:
            return read_stats(self._synth)[name]
        raise AttributeError(f"SynthStats has no attribute {name!r}; it has {', '.join(SynthStats.FIELDS)}")

    def as_dict(self) -> dict:
        return dict(read_stats(self._synth))

    def __repr__(self) -> str:
        return "SynthStats(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


def read_stats(synth) -> dict:
    """One read of every device statistic; warns about non-finite events since the last read."""
    with torch.no_grad():
        pd, pp, dd = (v.double() for v in synth.fit.unbind())
        skill = torch.where(dd > 0, (2 * pd - pp) / dd, 0.0)
        corr = torch.where((pp > 0) & (dd > 0), pd / (pp * dd).sqrt(), 0.0)
        gate = torch.as_tensor(synth._scale(), dtype=torch.float64, device=synth.fit.device)
        gate = gate / synth.factor if synth.factor else torch.zeros_like(gate)
        values = torch.cat([synth._counts.double(), _last(synth), torch.stack([skill, gate, corr])]).tolist()
    counts = [int(v) for v in values[:4]]
    _warn(synth, counts)
    return {"updates": counts[UPDATES], "targets": synth._host["targets"] - counts[NONFINITE_TARGETS],
            "zero_targets": synth._host["zero_targets"], "dropped_ends": synth._host["dropped_ends"],
            "nonfinite_predictions": counts[NONFINITE_PREDICTIONS], "nonfinite_targets": counts[NONFINITE_TARGETS],
            "skipped_updates": counts[SKIPPED_UPDATES], "last_loss": values[4], "last_target_energy": values[5],
            "skill": values[6], "gate": values[7], "correlation": values[8]}


def _last(synth) -> torch.Tensor:
    """[regression loss, target mean square] of the last update, in gradient units (NaN before one)."""
    if synth._last_update is None:
        return torch.full((2,), float("nan"), dtype=torch.float64, device=synth.fit.device)
    loss, unit, sq, n, dtype = synth._last_update
    u = unit if torch.is_tensor(unit) else torch.tensor(unit, device=loss.device)
    last = torch.stack([loss.double() * u.double() ** 2, sq.double()]) / n
    return last.to(dtype).to(device=synth.fit.device, dtype=torch.float64)  # rounded as the synthesizer's dtype was


def _warn(synth, counts: list[int]) -> None:
    """One RuntimeWarning per kind of non-finite event counted since the last read (pointing at
    the read of ``synth.stats`` that found them: stacklevel as before the move)."""
    for i, what in ((NONFINITE_PREDICTIONS, "predicted NaN/Inf {} time(s); it injected zeros instead"),
                    (NONFINITE_TARGETS, "was given {} NaN/Inf target(s) or boundary state(s); they were dropped"),
                    (SKIPPED_UPDATES, "had a NaN/Inf gradient {} time(s); those updates were skipped")):
        if counts[i] > synth._reported[i]:
            warnings.warn("dni_dist: the synthesizer " + what.format(counts[i] - synth._reported[i]) +
                          " (since the last read of synth.stats)", RuntimeWarning, stacklevel=3)
            synth._reported[i] = counts[i]
