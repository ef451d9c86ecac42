"""Checkpoints written atomically, read safely, and owned by one run.

Each checkpoint is ``ckpt-<batch>.pt`` written through :mod:`dni_dist.files` (a temporary name,
fsynced, renamed: :func:`latest` only ever sees complete files; a failed write leaves the previous
files as they were and is one line naming the path, the cause and the free space). Everything in
a checkpoint is tensors and plain Python types, and it is read with
``torch.load(weights_only=True)``: a checkpoint from an untrusted source cannot execute code
(SECURITY.md). A checkpoint that cannot be read is reported, and the previous complete one is used.

A directory belongs to one run: every checkpoint records its run (``"run": {"id", "batches"}``,
the checkpoints that run wrote, carried on by a resumed run), and retention (``keep``) deletes only
those, never another run's file or a stray one. :func:`foreign` says whether a directory holds
another experiment's checkpoints (a fresh run refuses it unless ``DNI_DIST_REUSE_CHECKPOINT_DIR=1``).
"""
from __future__ import annotations

import os
import re
import uuid
import warnings
from typing import Callable

import torch

from . import files

PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")
TMP = re.compile(r"^ckpt-\d{8}\.pt\.tmp\.\d+$")
REUSE_ENV = "DNI_DIST_REUSE_CHECKPOINT_DIR"
_runs: dict[str, dict] = {}  # abspath(directory) -> {"id": run id, "batches": checkpoints it wrote and keeps}


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be used as asked (nothing to resume, or unwritable)."""


def check_writable(directory: str) -> None:
    """Fail at start, not at the first checkpoint, when ``directory`` cannot hold checkpoints."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"--checkpoint-dir {directory!r} is a file, not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"--checkpoint-dir {directory!r} is not writable: {e}") from e


def begin_run(directory: str, run: dict | None = None) -> str:
    """Start this process's record of the checkpoints it owns in ``directory``: a new run, or
    (resuming) the ``run`` entry of the checkpoint it continues. Returns the run id."""
    run = run if isinstance(run, dict) and isinstance(run.get("id"), str) else None
    _runs[os.path.abspath(directory)] = {"id": run["id"] if run and run["id"] else uuid.uuid4().hex[:12],
                                         "batches": [int(b) for b in run.get("batches", [])] if run else []}
    return _runs[os.path.abspath(directory)]["id"]


def save(directory: str, batch: int, state: dict, keep: int = 0) -> str:
    """Write ``state`` (plus the RNG and this run's record) as the checkpoint of ``batch``; keep
    the newest ``keep`` checkpoints of this run (0 = all). Never deletes another run's files.
    A failed write raises :class:`dni_dist.files.WriteError` (path, cause, free space)."""
    key = os.path.abspath(directory)
    if key not in _runs:
        begin_run(directory)
    run = _runs[key]
    path = os.path.join(directory, f"ckpt-{batch:08d}.pt")
    mine = sorted(set(run["batches"]) | {batch})
    kept = mine[-keep:] if keep else mine
    files.save_torch({"batch": batch, "rng": torch.get_rng_state(), "run": {"id": run["id"], "batches": kept},
                      **state}, path, "checkpoint")
    run["batches"] = kept
    for old in mine:
        if old not in kept:
            _remove(os.path.join(directory, f"ckpt-{old:08d}.pt"))
    return path


def clean_temporary(directory: str) -> int:
    """Remove ``.tmp`` files a killed writer left (call when no writer runs). Returns how many."""
    if not os.path.isdir(directory):
        return 0
    names = [n for n in os.listdir(directory) if TMP.match(n)]
    for n in names:
        _remove(os.path.join(directory, n))
    return len(names)


def latest(directory: str, accept: Callable[[dict], str] | None = None, restore_rng: bool = True):
    """``(batch, state)`` of the newest checkpoint that loads (and that ``accept(state)`` does not
    reject by returning a reason), or None. A newer file that does not load (truncated, corrupt,
    holding anything but tensors and plain types) or is rejected is skipped with a warning naming
    it: a stray file never hides the newest real one. Restores the RNG state saved with it."""
    rejected = []  # (path, reason): warned about only if an older checkpoint is used instead
    for batch in reversed(_numbers(directory)):
        path = os.path.join(directory, f"ckpt-{batch:08d}.pt")
        state = read(path, batch)
        if state is None:
            continue
        reason = accept(state) if accept is not None else ""
        if reason:
            rejected.append((path, reason))
            continue
        for p, why in rejected:
            warnings.warn(f"dni_dist: skipping checkpoint {p}: {why}; using the previous one", RuntimeWarning)
        if restore_rng:
            torch.set_rng_state(state["rng"])
        return batch, state
    return None


def read(path: str, batch: int, quiet: bool = False) -> dict | None:
    """The checkpoint at ``path`` if it loads safely and is one (a dict with its ``batch`` and the
    RNG state), else None after a warning that says why (never torch's advice to load it unsafely)."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(state, dict) or state.get("batch") != batch:
            raise ValueError("not a dni_dist checkpoint (no matching 'batch' entry)")
        if not torch.is_tensor(state.get("rng")):
            raise ValueError("not a dni_dist checkpoint (no 'rng' entry: the RNG state to resume with)")
    except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never executed
        if not quiet:
            warnings.warn(f"dni_dist: skipping checkpoint {path}: it cannot be loaded safely ({_why(e)}); "
                          "trying the previous one", RuntimeWarning)
        return None
    return state


def foreign(directory: str, differs: Callable[[dict], str]) -> str:
    """Why ``directory`` belongs to another experiment ('' if it holds none of its checkpoints or
    only checkpoints for which ``differs(state)`` is ''): judged by its newest readable checkpoint."""
    for batch in reversed(_numbers(directory)):
        path = os.path.join(directory, f"ckpt-{batch:08d}.pt")
        state = read(path, batch, quiet=True)
        if state is not None:
            reason = differs(state)
            return f"{path}: {reason}" if reason else ""
    return ""


def _why(e: Exception) -> str:
    """What went wrong loading a file, in our words: torch's message for a refused object tells
    the reader to load it with weights_only=False, which is exactly what must not be done."""
    text = str(e)
    if "Weights only load failed" in text:
        detail = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith(("Unsupported", "GLOBAL"))),
                      "")
        return "it holds objects other than tensors and plain types, which safe loading refuses" + \
            (f": {detail[:120]}" if detail else "")
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _numbers(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return sorted(int(m.group(1)) for n in os.listdir(directory) if (m := PATTERN.match(n)))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
