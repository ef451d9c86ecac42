"""Checkpoints written atomically: a crash mid-write never leaves a file that looks complete.

Each checkpoint is ``ckpt-<batch>.pt`` written to a temporary name, fsynced, then renamed
(atomic on POSIX); :func:`latest` only ever sees complete files.
"""
from __future__ import annotations

import os
import re

import torch

PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")


def save(directory: str, batch: int, state: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"ckpt-{batch:08d}.pt")
    tmp = path + f".tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save({"batch": batch, "rng": torch.get_rng_state(), **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def latest(directory: str):
    """``(batch, state)`` of the newest complete checkpoint, or None."""
    if not os.path.isdir(directory):
        return None
    found = sorted(int(m.group(1)) for n in os.listdir(directory) if (m := PATTERN.match(n)))
    if not found:
        return None
    batch = found[-1]
    state = torch.load(os.path.join(directory, f"ckpt-{batch:08d}.pt"), weights_only=False)
    torch.set_rng_state(state["rng"])
    return batch, state
