"""Char-LM specs over text files, for ``python -m dni_dist.diagnose --spec research.text_specs:NAME``.

The built-in ``--task charlm`` accepts only 'shakespeare' and 'ptb'; these wrap the same
``dni_dist.tasks.specs.charlm_spec`` for the corpora made by benchmarks/python_corpus.py and
benchmarks/doc_corpora.py (LSTM 128, batch 32, 8 chunks of T=5 per batch, state carried).
"""
from types import SimpleNamespace

from dni_dist.tasks.specs import charlm_spec


def _spec(corpus: str):
    cfg = SimpleNamespace(corpus=corpus, stream_groups=1, batch=32, length=40, hidden=128, layers=1,
                          eval_chars=50_000)
    return charlm_spec(cfg)


def python_source():
    return _spec("runs/python_stdlib.txt")


def rust_book():
    return _spec("runs/rust_book.txt")
