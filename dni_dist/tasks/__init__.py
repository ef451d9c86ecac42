"""Data for the benchmarks and the engine: generated algorithmic tasks and character streams.

Every task yields ``(x, y, mask)`` batches, batch-first: ``x`` (B, L, D) float or (B, L) long,
``y`` targets, ``mask`` (B, L) float weights of each step's loss (0 where there is no target).
"""
from .algorithmic import copy_batch, delayed_recall_batch, pad_to_multiple, repeat_copy_batch
from .text import CharCorpus, load_corpus

__all__ = ["copy_batch", "delayed_recall_batch", "pad_to_multiple", "repeat_copy_batch", "CharCorpus",
           "load_corpus"]
