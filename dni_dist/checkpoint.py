"""Checkpoints written atomically and read safely.

Each checkpoint is ``ckpt-<batch>.pt`` written to a temporary name, fsynced, then renamed
(atomic on POSIX): :func:`latest` only ever sees complete files. Everything in a checkpoint is
tensors and plain Python types, and it is read with ``torch.load(weights_only=True)``: a
checkpoint from an untrusted source cannot execute code (SECURITY.md). A checkpoint that cannot
be read is reported, and the previous complete one is used.
"""
from __future__ import annotations

import os
import re
import warnings

import torch

PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")
TMP = re.compile(r"^ckpt-\d{8}\.pt\.tmp\.\d+$")


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


def save(directory: str, batch: int, state: dict, keep: int = 0) -> str:
    """Write ``state`` (plus the RNG) as the checkpoint of ``batch``; keep the newest ``keep``
    checkpoints (0 = all) and remove temporary files this process left."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"ckpt-{batch:08d}.pt")
    tmp = path + f".tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save({"batch": batch, "rng": torch.get_rng_state(), **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if keep:
        for old in _numbers(directory)[:-keep]:
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


def latest(directory: str):
    """``(batch, state)`` of the newest checkpoint that loads, or None. A newer file that does
    not load (truncated, corrupt, or holding anything but tensors and plain types) is skipped
    with a warning naming it. Restores the RNG state saved with it."""
    for batch in reversed(_numbers(directory)):
        path = os.path.join(directory, f"ckpt-{batch:08d}.pt")
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
            if not isinstance(state, dict) or state.get("batch") != batch:
                raise ValueError("not a dni_dist checkpoint (no matching 'batch' entry)")
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never executed
            warnings.warn(f"dni_dist: skipping checkpoint {path}: it cannot be loaded safely "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                          "trying the previous one", RuntimeWarning)
            continue
        torch.set_rng_state(state["rng"])
        return batch, state
    return None


def _numbers(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return sorted(int(m.group(1)) for n in os.listdir(directory) if (m := PATTERN.match(n)))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
