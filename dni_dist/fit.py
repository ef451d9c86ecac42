"""``dni_dist.fit(spec, config)``: train a user's spec in the configured mode.

    result = dni_dist.fit(spec, workers=2, steps=100)            # options by name, the spec's own settings
    result = dni_dist.fit(spec, dni_dist.Config(workers=2, ...)) # or a whole Config
    result.model, result.metrics

Debug mode (the default) runs K simulated workers in this process; under torchrun (``RANK`` in
the environment) this process is one worker; ``backend="ray"`` places K actors (the spec goes to
them by value). ``python -m dni_dist.train`` is the command line over this function.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass

import torch

from .config import TASK, Config, ConfigError, defaults, unknown_key
from .runners.spec_source import resolve_spec, spec_path  # noqa: F401 - part of fit's surface
from .spec import Spec, SpecError, guard  # noqa: F401 - SpecError: part of fit's surface


class ConfigWarning(UserWarning):
    """An option the spec ignores or overrides (the run goes on without it)."""


@dataclass
class Result:
    model: object | None
    """The trained nn.Module (every rank under torchrun: the replicas are equal at the end)."""
    metrics: dict | None
    """losses, tokens_per_s, evals, ... (None on ranks other than 0)."""


def check_device(cfg: Config) -> None:
    """``--device cuda`` where this torch or this machine has no GPU: one line, at start."""
    if cfg.device != "cuda":
        return
    import torch
    if torch.version.cuda is None:
        raise ValueError(f"--device cuda: this PyTorch build ({torch.__version__}) has no CUDA support; install a "
                         "CUDA build of torch, or use --device cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to this process (check the driver and "
                         "CUDA_VISIBLE_DEVICES), or use --device cpu")


def under_torchrun() -> bool:
    return int(os.environ.get("RANK", -1)) != -1


def _is_builtin(spec: Spec) -> bool:
    return spec.name.startswith("task:")  # a built-in task reads the task options itself


def spec_settings(spec: Spec, values: dict) -> tuple[dict, list[str]]:
    """``values`` (the options a user set, by field name) with the spec's own settings filled in
    where the user set none: its shape (``truncation``, ``chunks``) and its ``defaults``. Returns
    them with one-line notes for options the spec ignores or overrides; an option that contradicts
    the spec (a sequence length its batches do not have) is a :class:`ConfigError`."""
    values, notes = dict(values), []
    if _is_builtin(spec):
        return values, notes
    given = dict(values)
    t, n = spec.truncation, spec.chunks
    if t is not None and n is not None:
        length = t * n
        if "truncation" not in given and "chunks" not in given:
            values.update(truncation=t, chunks=n)
        for name, other in (("truncation", "chunks"), ("chunks", "truncation")):
            if name in given and other not in given:  # the sequence length is the spec's: the other follows
                if length % given[name]:
                    raise ConfigError(f"{name}={given[name]}: the spec's batches are {length} steps long "
                                      f"(truncation {t} x chunks {n}); --{name} must divide {length}", name)
                values[other] = length // given[name]
        if "truncation" in given and "chunks" in given and given["truncation"] * given["chunks"] != length:
            raise ConfigError(f"truncation={given['truncation']} x chunks={given['chunks']} = "
                              f"{given['truncation'] * given['chunks']} steps, but the spec's batches are {length} "
                              f"steps long (truncation {t} x chunks {n}): leave them out or keep the product",
                              "truncation", "chunks")
    else:
        for name, value in (("truncation", t), ("chunks", n)):
            if value is not None and name not in given:
                values[name] = value
    for name, value in spec.defaults.items():
        if name == "workers" and under_torchrun():
            continue  # the launcher's world size decides
        values.setdefault(name, value)
    task_options = {f.name for f in dataclasses.fields(Config) if f.metadata["group"] == TASK} - {"spec"}
    for name, value in given.items():
        flag = f"--{name.replace('_', '-')} {value}"
        if name in task_options:
            notes.append(f"{flag} is ignored: the spec brings its own model and data")
        elif name == "lr" and spec.optimizer is not None:
            notes.append(f"{flag} is ignored: the spec brings its own optimizer")
        elif name in ("lr_schedule", "warmup_steps") and spec.lr_schedule is not None:
            notes.append(f"{flag} is ignored: the spec brings its own lr_schedule")
        elif name in ("synth_lr", "factor", "discount"):
            key = "lr" if name == "synth_lr" else name
            if key in spec.synthesizer:
                notes.append(f"{flag} is overridden by the spec's synthesizer option {key}={spec.synthesizer[key]!r}")
    return values, notes


def resolve(cfg: Config) -> Config:
    """Fill in what the launcher decides: the backend and the worker count under torchrun."""
    check_device(cfg)
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if cfg.workers and cfg.workers != world:
            raise ConfigError(f"torchrun started {world} processes (--nproc-per-node x --nnodes) but --workers is "
                              f"{cfg.workers}: leave --workers out (it defaults to the world size) or make them "
                              "equal", "workers")
        cfg = dataclasses.replace(cfg, backend="torch", workers=world)
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and cfg.checkpoint_dir:
            cfg = dataclasses.replace(cfg, resume=True)  # a restarted group continues from its checkpoint
    elif cfg.backend == "torch":
        raise ConfigError(f"--backend torch must be launched by torchrun: torchrun --standalone "
                          f"--nproc-per-node {cfg.workers or 2} -m dni_dist.train ...", "backend")
    elif not cfg.workers:
        cfg = dataclasses.replace(cfg, workers=1)
    if cfg.parallel == "data" and cfg.backend == "debug" and cfg.workers > 1:
        raise ConfigError("parallel='data' runs under torchrun or Ray (backend 'torch' or 'ray'), not debug mode",
                          "parallel")
    if cfg.pin_cores and cfg.backend == "debug":
        raise ConfigError("--pin-cores pins torchrun or Ray worker processes to cores; debug mode runs every "
                          "worker in this one process: leave it off, or launch with torchrun or --backend ray",
                          "pin_cores")
    return cfg


def fit(spec: Spec, config: Config | None = None, **options) -> Result:
    """Train ``spec``; returns the model and the metrics.

    ``options`` are :class:`Config` fields by name (``fit(spec, workers=2, steps=100)``), over
    ``config`` where both are given. The spec's own settings (``Spec.truncation``, ``chunks``,
    ``defaults``) fill in what neither sets (a ``config`` field equal to Config's default counts as
    not set); an option the spec ignores is a :class:`ConfigWarning`. The thread count is restored
    on return.

    An error raised in one of the spec's functions is a :class:`SpecError` naming the function
    (the user's exception is its ``__cause__``). A failure after the training loop (the final
    evaluation, ``--save``, a run that ended non-finite or exploded) is an
    :class:`dni_dist.runners.common.EndOfRunError` raised after everything else was written; its
    ``metrics`` and ``model`` are the run's.

    References:
        Jaderberg et al. 2017, "Decoupled Neural Interfaces using Synthetic Gradients", arXiv 1608.05343.
    """
    if not isinstance(spec, Spec):
        raise TypeError(f"fit(spec, ...): expected a dni_dist.Spec; got {type(spec).__name__}")
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"fit(spec, config): expected a dni_dist.Config; got {type(config).__name__} (options by "
                        "name: fit(spec, workers=2, ...))")
    if not spec.name:
        spec.name = (config.spec if config else options.get("spec")) or getattr(spec.model, "__qualname__", "spec")
    unset = defaults()
    for key in options:
        if key not in unset:
            raise unknown_key("fit(spec, ...)", key, unset)
    values = {k: v for k, v in (config.to_dict() if config else {}).items() if v != unset[k]}
    values, notes = spec_settings(spec, {**values, **options})
    cfg = Config(**values)
    if not under_torchrun() or os.environ.get("RANK") == "0":
        for note in notes:
            warnings.warn(f"dni_dist: {note}", ConfigWarning, stacklevel=2)
    return run(spec, cfg)


def run(spec: Spec, cfg: Config) -> Result:
    """Train ``spec`` with ``cfg`` as it is (the spec's settings already in it: see :func:`fit`)."""
    cfg = resolve(cfg)
    spec = guard(spec)  # an error in the spec's own functions names the function
    threads = torch.get_num_threads()
    try:
        if cfg.backend == "torch":
            import torch.distributed as dist

            from .runners.distributed import init_from_env, run_rank
            rank, world = init_from_env(cfg)
            try:
                model, m = run_rank(cfg, spec, rank, world)
            finally:
                dist.destroy_process_group()
            return Result(model, m if rank == 0 else None)
        if cfg.backend == "ray":
            from .runners.ray_actors import run as run_ray
            # the config's own spec travels by import path (the actors load it); any other by value
            by_value = None if spec.name == spec_path(cfg) else spec
            model, m = run_ray(cfg, spec, by_value)
            return Result(model, m)
        from .runners.debug import run as run_debug
        model, m = run_debug(cfg, spec)
        return Result(model, m)
    finally:
        torch.set_num_threads(threads)
