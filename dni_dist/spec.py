"""What a user brings: a model, data, a loss and (optionally) an optimizer and an evaluation.

    spec = dni_dist.Spec(model=build, batch=get_batch, loss=loss_fn, truncation=4, chunks=8)
    result = dni_dist.fit(spec, workers=2, steps=100)

The engine owns the loop; a spec is builder functions in a dataclass (after torchtitan's
``TrainSpec``). The same spec runs in debug mode, under torchrun and on Ray; on the command line
it is named by import path: ``python -m dni_dist.train --spec package.module:spec``.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import Config, check_synth_options, unknown_key


@dataclass
class Spec:
    """A training problem for :func:`dni_dist.fit`.

    Args:
        model: ``() -> nn.Module`` whose ``forward(x, state)`` returns ``(out, state)``; ``state``
            is None on a sequence's first chunk (as for ``nn.LSTM``/``nn.GRU``) and any PyTorch
            RNN state form otherwise (a tensor, or an ``(h, c)`` tuple). Called after
            ``torch.manual_seed(config.seed)`` on every worker, so every replica starts equal.
        batch: ``(index) -> (x, y)`` or ``(x, y, mask)``: batch-first tensors whose time axis
            (dim 1) is exactly ``config.chunks * config.truncation`` long. A pure function of
            ``index``: every worker computes its own chunks from it, and resume is exact.
        loss: ``(out, y, mask) -> scalar`` for one chunk (``mask`` is None when ``batch``
            returns two tensors); back-propagated exactly as returned.
        optimizer: ``(params) -> torch.optim.Optimizer``; default ``Adam(lr=config.lr)``.
        evaluate: ``(model) -> dict of floats``, called on rank 0 every ``config.eval_every``
            batches and at the end, under ``torch.no_grad()`` with the model in eval mode.
        stream_groups: 0: every batch starts from None. G >= 1: batch i continues the streams
            of batch i - G from the state that batch ended in (stateful TBPTT over a corpus).
        synthesizer: keyword arguments for :class:`dni_dist.Synthesizer` (they override the
            config's ``synth_lr``, ``factor`` and ``discount``; ``--synth-options`` overrides them).
        truncation, chunks: the shape ``batch`` returns (``chunks * truncation`` steps), used
            where the user sets neither; setting one makes the other follow the spec's length, and
            a different length is an error. None: the config's.
        defaults: defaults for other :class:`dni_dist.Config` options, e.g. ``{"steps": 300,
            "eval_every": 100, "workers": 2}`` (the command line and ``fit``'s options win;
            ``workers`` is the launcher's under torchrun).
        lr_schedule: ``(optimizer step) -> factor`` of the model's learning rate (a LambdaLR,
            stepped once per optimizer step, saved in checkpoints); over ``--lr-schedule``.
        on_batch_end: ``(batch_index, metrics)`` after every batch (``metrics``: ``loss``, the mean
            loss of the steps since the last call, and ``batches_done``). Rank 0 only.
        on_eval: ``(batch_index, metrics)`` after every evaluation (the dict ``evaluate`` returned).
            Rank 0 only. ``batch_index`` is the 0-based index of the last batch trained.
    """

    model: Callable[[], torch.nn.Module]
    batch: Callable[[int], tuple]
    loss: Callable
    optimizer: Callable | None = None
    evaluate: Callable | None = None
    stream_groups: int = 0
    synthesizer: dict = field(default_factory=dict)
    name: str = ""
    """Where the spec came from (an import path), for messages and checkpoints."""
    truncation: int | None = None
    chunks: int | None = None
    defaults: dict = field(default_factory=dict)
    lr_schedule: Callable[[int], float] | None = None
    on_batch_end: Callable[[int, dict], None] | None = None
    on_eval: Callable[[int, dict], None] | None = None

    def __post_init__(self):
        for attr in ("model", "batch", "loss"):
            if not callable(getattr(self, attr)):
                raise TypeError(f"Spec({attr}=...) must be callable; got {type(getattr(self, attr)).__name__}")
        for attr in ("optimizer", "evaluate", "lr_schedule", "on_batch_end", "on_eval"):
            value = getattr(self, attr)
            if value is not None and not callable(value):
                raise TypeError(f"Spec({attr}=...) must be callable or None; got {type(value).__name__}")
        if isinstance(self.stream_groups, bool) or not isinstance(self.stream_groups, int) or self.stream_groups < 0:
            raise ValueError(f"Spec(stream_groups={self.stream_groups!r}): expected an int >= 0")
        if self.synthesizer is None:
            self.synthesizer = {}
        if not isinstance(self.synthesizer, dict):
            raise TypeError(f"Spec(synthesizer=...) must be a dict of Synthesizer options; got "
                            f"{type(self.synthesizer).__name__}")
        check_synth_options(self.synthesizer, "Spec(synthesizer=...)")
        for attr in ("truncation", "chunks"):
            value = getattr(self, attr)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"Spec({attr}={value!r}): expected a positive int or None (the config's)")
        if not isinstance(self.defaults, dict):
            raise TypeError(f"Spec(defaults=...) must be a dict of Config options; got {type(self.defaults).__name__}")
        allowed = [f.name for f in dataclasses.fields(Config)
                   if f.name not in ("spec", "truncation", "chunks") and not f.metadata["hidden"]]
        for key in self.defaults:
            if key in ("truncation", "chunks"):
                raise ValueError(f"Spec(defaults=...): give {key} as Spec({key}=...), the spec's shape")
            if key not in allowed:
                raise unknown_key("Spec(defaults=...)", key, allowed)


def load_spec(path: str) -> Spec:
    """The :class:`Spec` named by ``"package.module:attr"`` (an attribute that is a Spec, or a
    function of no arguments returning one)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--spec {path!r}: expected 'package.module:attribute', e.g. 'examples.own_model:spec'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"--spec {path!r}: cannot import module {module_name!r} ({e}); it must be importable "
                          "on every worker (installed, or on PYTHONPATH / the working directory)") from e
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ImportError(f"--spec {path!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Spec) and callable(obj):
        obj = obj()
    if not isinstance(obj, Spec):
        raise TypeError(f"--spec {path!r}: expected a dni_dist.Spec (or a function returning one); got "
                        f"{type(obj).__name__}")
    if not obj.name:
        obj.name = path
    return obj


def split_batch(spec: Spec, index: int, length: int):
    """``spec.batch(index)`` checked against the data contract: ``(x, y, mask or None)``."""
    got = spec.batch(index)
    if not isinstance(got, (tuple, list)) or len(got) not in (2, 3):
        raise TypeError(f"Spec.batch({index}) must return (x, y) or (x, y, mask); got "
                        f"{type(got).__name__}{'' if not isinstance(got, (tuple, list)) else f' of {len(got)}'}")
    x, y, mask = (*got, None) if len(got) == 2 else got
    for label, t in (("x", x), ("y", y), ("mask", mask)):
        if t is None and label == "mask":
            continue
        if not torch.is_tensor(t) or t.dim() < 2:
            raise TypeError(f"Spec.batch({index}): {label} must be a batch-first tensor (B, {length}, ...); got "
                            + (f"shape {tuple(t.shape)}" if torch.is_tensor(t) else type(t).__name__))
        if t.shape[1] != length:
            raise ValueError(f"Spec.batch({index}): {label} has {t.shape[1]} steps (shape {tuple(t.shape)}) but "
                             f"chunks * truncation = {length}; nothing is cut or padded silently: return "
                             f"exactly {length} steps or change --chunks/--truncation")
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"Spec.batch({index}): {label} has batch size {t.shape[0]} but x has {x.shape[0]}")
    return x, y, mask


# ---------------------------------------------------------------- errors in the user's functions
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
