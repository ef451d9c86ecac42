"""What a worker is told about the run: :class:`WorkerSettings`, built once by the runner from its
configuration (:func:`dni_dist.run_plan.worker_settings`). The engine reads these, never the
configuration itself, so a worker can be built and tested without a :class:`dni_dist.config.Config`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerSettings:
    """One worker's settings (identical on every worker of a run).

    Args:
        truncation: time steps per chunk (T); ``length`` = chunks per sequence * T.
        mode: 'dni' (a synthesizer at every cut) or 'tbptt'.
        synth: the Synthesizer's keywords (:func:`dni_dist.run_plan.synth_kwargs`); None in 'tbptt'.
        seed: seeds the model's weights (the same on every worker: replicas start equal).
        lr: Adam's learning rate when the spec brings no optimizer.
        device: where the model, its chunks and its synthesizer live.
        divergence_window, divergence_threshold: stop when more than that share of the last
            ``window`` chunks had a non-finite loss or gradient.
        precision, grad_accum, clip: the optimizer step (:class:`dni_dist.trainer.Trainer`).
        cosine_steps: the built-in cosine learning-rate schedule spans this many optimizer steps
            (None: no built-in schedule); ``warmup_steps`` of them ramp up linearly.
    """
    truncation: int
    length: int
    mode: str = "dni"
    synth: dict | None = None
    seed: int = 0
    lr: float = 1e-3
    device: str = "cpu"
    divergence_window: int = 200
    divergence_threshold: float = 0.1
    precision: str = "fp32"
    grad_accum: int = 1
    clip: float = 0.0
    cosine_steps: int | None = None
    warmup_steps: int = 0
