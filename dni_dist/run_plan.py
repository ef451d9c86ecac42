"""What a run is, resolved once from its configuration and its spec, above the worker.

:func:`worker_settings` is all a worker is told of the configuration (the engine never reads it).

The Synthesizer's keyword set (:func:`synth_kwargs`) is what a worker builds its synthesizer from
and what the run's schedule is built from (:func:`schedule_for`): the runner asks these options,
never a built Synthesizer, which options it was given. Nothing here imports a worker, a trainer or
a runner, so all of them can import it.
"""
from __future__ import annotations

import inspect

from .engine.schedule import Schedule
from .engine.settings import WorkerSettings
from .synth_options import merge_options
from .synthesizer import Synthesizer

_LOOKAHEAD = inspect.signature(Synthesizer.__init__).parameters["lookahead"].default


def synth_kwargs(cfg, spec) -> dict | None:
    """The keywords a run's Synthesizer is built with (None in mode 'tbptt': no synthesizer): the
    config's lr, factor and discount, the spec's options over them, ``cfg.synth_options`` over
    both; the research options merged into one :class:`SynthOptions` (``options=``). An unknown
    option or a bad research option raises here, with the message the Synthesizer gives."""
    if cfg.mode != "dni":
        return None
    opts = {"lr": cfg.synth_lr, "factor": cfg.factor, "discount": cfg.discount, **spec.synthesizer,
            **cfg.synth_options}
    everyday = set(inspect.signature(Synthesizer.__init__).parameters) - {"self", "more"}
    more = {k: opts.pop(k) for k in list(opts) if k not in everyday}
    opts["options"] = merge_options(opts.get("options"), more)
    return opts


def stream_groups(cfg, spec) -> int:
    """The spec's stream groups unless the config sets them. (With parallel='data' each replica
    holds its own rows' streams: a checkpoint saves every rank's, :meth:`Worker.inflight_state`.)"""
    return spec.stream_groups if cfg.stream_groups < 0 else cfg.stream_groups


def schedule_for(cfg, spec, first_batch: int) -> Schedule:
    """The whole run from ``first_batch`` to ``cfg.steps`` as one schedule. Checkpoints do not cut
    it: the pipeline never drains before the end, so a run that checkpoints computes what a run
    that does not computes (a checkpoint holds what is in flight instead; issue 30, goal 2)."""
    kw = synth_kwargs(cfg, spec)
    lookahead = kw.get("lookahead", _LOOKAHEAD) if kw else 1
    train_every = kw["options"].train_every if kw else 1
    workers = 1 if cfg.parallel == "data" else cfg.workers
    return Schedule(cfg.chunks, workers, cfg.steps - first_batch, first_batch=first_batch,
                    stream_groups=stream_groups(cfg, spec), deltas=cfg.mode == "dni", lookahead=lookahead,
                    train_every=train_every)


def optimizer_steps(cfg, spec) -> int:
    """How many optimizer steps the run takes: ticks where some worker runs a chunk (the whole run
    is one schedule), divided by ``grad_accum`` (chunks skipped for a non-finite loss aside)."""
    s = schedule_for(cfg, spec, 0)
    busy = sum(1 for t in range(s.ticks) if any(s.action(w, t) is not None for w in range(s.workers)))
    return busy // cfg.grad_accum


def worker_settings(cfg, spec) -> WorkerSettings:
    """What each worker of this run is told (the spec's own ``lr_schedule`` wins over --lr-schedule)."""
    cosine = cfg.lr_schedule == "cosine" and getattr(spec, "lr_schedule", None) is None
    return WorkerSettings(truncation=cfg.truncation, length=cfg.length, mode=cfg.mode, synth=synth_kwargs(cfg, spec),
                          seed=cfg.seed, lr=cfg.lr, device=cfg.device, divergence_window=cfg.divergence_window,
                          divergence_threshold=cfg.divergence_threshold, precision=cfg.precision,
                          grad_accum=cfg.grad_accum, clip=cfg.clip,
                          cosine_steps=optimizer_steps(cfg, spec) if cosine else None, warmup_steps=cfg.warmup_steps)
