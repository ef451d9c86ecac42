"""The built-in tasks as :class:`dni_dist.Spec` s, exactly as a user would write their own.

``--task recall|copy|repeat_copy|charlm`` picks one; the engine imports none of this.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..model import SeqModel
from ..spec import Spec
from .algorithmic import copy_batch, delayed_recall_batch, pad_to_multiple, repeat_copy_batch


def bce_loss(out, y, mask):
    """Independent bits: binary cross-entropy summed over bits and steps, averaged over the batch."""
    per = F.binary_cross_entropy_with_logits(out, y, reduction="none").sum(-1)
    return (per * mask).sum() / out.shape[0]


def ce_loss(out, y, mask):
    """Classes: cross-entropy summed over steps (masked if a mask is given), averaged over the batch."""
    per = F.cross_entropy(out.transpose(1, 2), y, reduction="none")
    if mask is not None:
        per = per * mask
    return per.sum() / out.shape[0]


def _generator(cfg, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)


def recall_spec(cfg) -> Spec:
    """Delayed recall: the target at step t is the random input bit at step t - delay."""
    def batch(i):
        return delayed_recall_batch(cfg.batch, cfg.length, cfg.delay, _generator(cfg, i))
    return Spec(model=lambda: SeqModel(1, cfg.hidden, 1, num_layers=cfg.layers), batch=batch, loss=bce_loss,
                name="recall")


def copy_spec(cfg) -> Spec:
    """Copy N 8-bit vectors after a delimiter (padded with masked steps to chunks * truncation)."""
    def batch(i):
        return pad_to_multiple(*copy_batch(cfg.batch, cfg.copy_len, _generator(cfg, i)), cfg.length)
    return Spec(model=lambda: SeqModel(9, cfg.hidden, 8, num_layers=cfg.layers), batch=batch, loss=bce_loss,
                name="copy")


def repeat_copy_spec(cfg) -> Spec:
    """Repeat-copy: N vectors, then the pattern ``repeats`` times."""
    def batch(i):
        return pad_to_multiple(*repeat_copy_batch(cfg.batch, cfg.copy_len, cfg.repeats, _generator(cfg, i)),
                               cfg.length)
    return Spec(model=lambda: SeqModel(10, cfg.hidden, 8, num_layers=cfg.layers), batch=batch, loss=bce_loss,
                name="repeat_copy")


def charlm_spec(cfg) -> Spec:
    """Character-level language model over a corpus cut into ``stream_groups * batch`` streams.

    Batch i is window ``i // G`` of stream group ``i % G`` (G = stream groups, at least 1), so
    with ``stream_groups=G`` batch i continues batch i - G's streams. After the last window the
    streams wrap around to the start (the state is carried over the seam). ``evaluate`` reports
    validation bits per character on the first ``eval_chars`` characters (8 streams).
    """
    from .text import CharCorpus, load_corpus
    corpus = CharCorpus(load_corpus(cfg.corpus))
    groups = max(cfg.stream_groups, 1)
    streams = corpus.streams("train", groups * cfg.batch)           # (G*B, per)
    windows = (streams.shape[1] - 1) // cfg.length
    if windows < 1:
        raise ValueError(f"the corpus is too short for {groups * cfg.batch} streams of {cfg.length + 1} characters")

    def batch(i):
        g, w = i % groups, (i // groups) % windows
        rows = streams[g * cfg.batch:(g + 1) * cfg.batch]
        s = w * cfg.length
        return rows[:, s:s + cfg.length], rows[:, s + 1:s + 1 + cfg.length]

    valid = corpus.data["valid"][: cfg.eval_chars]

    def evaluate(model):
        return {"valid_bpc": bits_per_char(model, valid, 8)}

    return Spec(model=lambda: SeqModel(corpus.vocab, cfg.hidden, corpus.vocab, num_layers=cfg.layers, loss="ce",
                                       vocab=True),
                batch=batch, loss=ce_loss, evaluate=evaluate, stream_groups=groups, name=f"charlm:{cfg.corpus}")


def bits_per_char(model, ids: torch.Tensor, streams: int, span: int = 256) -> float:
    """Bits per character of a stateful pass over ``ids`` cut into ``streams`` rows."""
    per = ids.numel() // streams
    rows = ids[: per * streams].view(streams, per)
    state, total, count = None, 0.0, 0
    with torch.no_grad():
        for s in range(0, per - 1, span):
            x = rows[:, s:min(s + span, per - 1)]
            y = rows[:, s + 1:s + 1 + x.shape[1]]
            out, state = model(x, state)
            total += float(F.cross_entropy(out.transpose(1, 2), y, reduction="sum"))
            count += y.numel()
    return total / count / math.log(2)


def task_spec(cfg) -> Spec:
    """The built-in task ``cfg.task`` as a Spec."""
    check_task(cfg)
    return {"recall": recall_spec, "copy": copy_spec, "repeat_copy": repeat_copy_spec,
            "charlm": charlm_spec}[cfg.task](cfg)


def check_task(cfg) -> None:
    """The built-in task's shape fits the sequence (checked when the task is built, so a user's own
    spec is never held to the built-in task's options)."""
    length = cfg.length
    if cfg.task == "recall" and not 0 <= cfg.delay < length:
        raise ConfigError(f"delay({cfg.delay}) must be in [0, chunks*truncation={length})", "delay", "chunks",
                          "truncation")
    if cfg.task == "copy" and 2 * cfg.copy_len + 1 > length:
        raise ConfigError(f"copy needs 2*copy_len+1 = {2 * cfg.copy_len + 1} <= chunks*truncation = "
                          f"{length}; raise --chunks or --truncation (nothing is truncated silently)",
                          "copy_len", "chunks", "truncation")
    if cfg.task == "repeat_copy" and cfg.copy_len * (cfg.repeats + 1) + 1 > length:
        raise ConfigError(f"repeat_copy needs copy_len*(repeats+1)+1 = "
                          f"{cfg.copy_len * (cfg.repeats + 1) + 1} <= chunks*truncation = {length}",
                          "copy_len", "repeats", "chunks", "truncation")
