"""``dni_dist.fit(spec, config)``: train a user's spec in the configured mode.

    result = dni_dist.fit(spec, dni_dist.Config(workers=2, truncation=4, chunks=8, steps=100))
    result.model, result.metrics

Debug mode (the default) runs K simulated workers in this process; under torchrun (``RANK`` in
the environment) this process is one worker; ``backend="ray"`` places K actors (the spec goes to
them by value). ``python -m dni_dist.train`` is the command line over this function.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .config import Config
from .runners.spec_source import resolve_spec, spec_path  # noqa: F401 - part of fit's surface
from .spec import Spec


@dataclass
class Result:
    model: object | None
    """The trained nn.Module (debug mode, Ray, and rank 0 under torchrun; None on other ranks)."""
    metrics: dict | None
    """losses, tokens_per_s, evals, ... (None on ranks other than 0)."""


def under_torchrun() -> bool:
    return int(os.environ.get("RANK", -1)) != -1


def resolve(cfg: Config) -> Config:
    """Fill in what the launcher decides: the backend and the worker count under torchrun."""
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if cfg.workers and cfg.workers != world:
            raise ValueError(f"torchrun started {world} processes (--nproc-per-node x --nnodes) but --workers is "
                             f"{cfg.workers}: leave --workers out (it defaults to the world size) or make them equal")
        cfg = dataclasses.replace(cfg, backend="torch", workers=world)
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and cfg.checkpoint_dir:
            cfg = dataclasses.replace(cfg, resume=True)  # a restarted group continues from its checkpoint
    elif cfg.backend == "torch":
        raise RuntimeError(f"--backend torch must be launched by torchrun: torchrun --standalone "
                           f"--nproc-per-node {cfg.workers or 2} -m dni_dist.train ...")
    elif not cfg.workers:
        cfg = dataclasses.replace(cfg, workers=1)
    if cfg.parallel == "data" and cfg.backend == "debug" and cfg.workers > 1:
        raise ValueError("parallel='data' runs under torchrun or Ray (backend 'torch' or 'ray'), not debug mode")
    if cfg.pin_cores and cfg.backend == "debug":
        raise ValueError("--pin-cores pins torchrun or Ray worker processes to cores; debug mode runs every "
                         "worker in this one process: leave it off, or launch with torchrun or --backend ray")
    return cfg


def fit(spec: Spec, config: Config | None = None) -> Result:
    """Train ``spec`` with ``config`` (default ``Config()``); returns the model and the metrics.

    References:
        Jaderberg et al. 2017, "Decoupled Neural Interfaces using Synthetic Gradients", arXiv 1608.05343.
    """
    if not isinstance(spec, Spec):
        raise TypeError(f"fit(spec, ...): expected a dni_dist.Spec; got {type(spec).__name__}")
    cfg = resolve(config or Config())
    if not spec.name:
        spec.name = cfg.spec or getattr(spec.model, "__qualname__", "spec")
    if cfg.backend == "torch":
        import torch.distributed as dist

        from .runners.distributed import init_from_env, run_rank
        rank, world = init_from_env(cfg)
        try:
            model, m = run_rank(cfg, spec, rank, world)
        finally:
            dist.destroy_process_group()
        return Result(model if rank == 0 else None, m if rank == 0 else None)
    if cfg.backend == "ray":
        from .runners.ray_actors import run as run_ray
        # the config's own spec travels by import path (the actors load it); any other by value
        by_value = None if spec.name == spec_path(cfg) else spec
        model, m = run_ray(cfg, spec, by_value)
        return Result(model, m)
    from .runners.debug import run as run_debug
    model, m = run_debug(cfg, spec)
    return Result(model, m)
