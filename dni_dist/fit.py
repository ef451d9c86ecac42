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
from .spec import Spec, load_spec


@dataclass
class Result:
    model: object | None
    """The trained nn.Module (debug mode, Ray, and rank 0 under torchrun; None on other ranks)."""
    metrics: dict | None
    """losses, tokens_per_s, evals, ... (None on ranks other than 0)."""


def spec_path(cfg: Config) -> str:
    """How the config names its spec: the import path, or ``task:<name>`` for a built-in task."""
    return cfg.spec or f"task:{cfg.task}"


def resolve_spec(cfg: Config) -> Spec:
    """The config's spec: ``--spec module:attr``, else the built-in ``--task``."""
    if cfg.spec:
        spec = load_spec(cfg.spec)
    else:
        from .tasks.specs import task_spec
        spec = task_spec(cfg)
    spec.name = spec_path(cfg)
    return spec


class SpecError(RuntimeError):
    """A function of the user's spec raised, or returned what the engine cannot use. The message
    names the function; ``__cause__`` keeps the user's traceback."""


class _Guarded:
    """A spec function that names itself when it raises or returns something unusable."""

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name
        self.first = None  # batch: (index, batch size) of the first batch seen in this process

    def __call__(self, *args, **kwargs):
        where = f"Spec.{self.name}({args[0]})" if self.name == "batch" and args else f"Spec.{self.name}"
        try:
            out = self.fn(*args, **kwargs)
        except SpecError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's own error, kept as the cause
            raise SpecError(f"{where} raised {type(e).__name__}: {e}") from e
        check = getattr(self, f"_check_{self.name}", None)
        if check is not None:
            check(out, where, args)
        return out

    def _check_batch(self, out, where, args):
        import torch
        if not isinstance(out, (tuple, list)) or not out or not torch.is_tensor(out[0]) or out[0].dim() < 1:
            return  # the data contract's own check (spec.split_batch) names what is wrong
        size = out[0].shape[0]
        if self.first is None:
            self.first = (args[0] if args else 0, size)
        elif size != self.first[1]:
            raise SpecError(f"{where} returned a batch of {size} sequences but Spec.batch({self.first[0]}) returned "
                            f"{self.first[1]}: every batch must have the same number of sequences")

    def _check_model(self, out, where, args):
        import torch
        if not isinstance(out, torch.nn.Module):
            raise SpecError(f"{where} returned {type(out).__name__}; expected a torch.nn.Module whose "
                            "forward(x, state) returns (out, state)")

    def _check_optimizer(self, out, where, args):
        if out is None or not (callable(getattr(out, "step", None)) and callable(getattr(out, "zero_grad", None))
                               and callable(getattr(out, "state_dict", None))):
            raise SpecError(f"{where} returned {type(out).__name__}; expected a torch.optim.Optimizer over the "
                            "parameters it was given (does the function end with `return`?)")

    def _check_loss(self, out, where, args):
        import torch
        if torch.is_grad_enabled() and torch.is_tensor(out) and not out.requires_grad:
            raise SpecError(f"{where} returned a tensor that does not require grad, so nothing can be trained: "
                            "compute it from the model's output with torch operations (no .item(), .detach(), "
                            "numpy or torch.no_grad())")


def guard(spec: Spec) -> Spec:
    """A copy of ``spec`` whose functions name themselves in any error they raise (idempotent)."""
    wrapped = {}
    for name in ("model", "batch", "loss", "optimizer", "evaluate"):
        fn = getattr(spec, name)
        if fn is not None and not isinstance(fn, _Guarded):
            wrapped[name] = _Guarded(fn, name)
    return dataclasses.replace(spec, **wrapped) if wrapped else spec


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


def resolve(cfg: Config) -> Config:
    """Fill in what the launcher decides: the backend and the worker count under torchrun."""
    check_device(cfg)
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
    cfg = resolve(config or Config())
    if not spec.name:
        spec.name = cfg.spec or getattr(spec.model, "__qualname__", "spec")
    spec = guard(spec)
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
