"""Bring your own model and data: a 2-layer character LSTM on your own text, through dni_dist.fit.

Everything the engine needs is in the Spec at the bottom: a model builder, a batch function (a
pure function of the batch index), a loss, an optimizer, an evaluation, stream groups (batch
i continues the text streams where batch i-2 stopped: stateful truncated BPTT over a corpus), the
shape of a batch (truncation x chunks) and defaults for other options (steps, workers, ...).

    python examples/own_model.py                                     # debug mode, 2 simulated workers
    torchrun --standalone --nproc-per-node 2 examples/own_model.py   # one worker per process
    python examples/own_model.py --backend ray                       # Ray actors (a private local Ray)
    python -m dni_dist.train --spec examples.own_model:spec          # the same, by import path

Any ``python -m dni_dist.train`` option works here too (--mode tbptt, --steps, --save, ...). From
Python: ``result = dni_dist.fit(spec, steps=100)``; ``result.model`` is the trained CharLSTM.
"""
import math
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F

import dni_dist

T, CHUNKS, BATCH, GROUPS = 8, 4, 16, 2  # truncation, chunks per batch, streams per batch, stream groups

# Your text: here this file and the package's README (any string works).
_here = os.path.dirname(os.path.abspath(__file__))
TEXT = "".join(open(os.path.join(_here, *p), encoding="utf-8").read()
               for p in (("own_model.py",), ("..", "README.md")) if os.path.exists(os.path.join(_here, *p)))
VOCAB = sorted(set(TEXT))
IDS = torch.tensor([VOCAB.index(c) for c in TEXT])
SPLIT = int(0.9 * len(IDS))
TRAIN, VALID = IDS[:SPLIT], IDS[SPLIT:]


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, hidden: int = 128, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state):  # state is None on a stream's first chunk
        out, state = self.rnn(self.embed(x), state)
        return self.head(out), state


def build():
    return CharLSTM(len(VOCAB))


def get_batch(index):
    """Batch i: window i // GROUPS of stream group i % GROUPS (so batch i continues batch i - GROUPS)."""
    length = T * CHUNKS
    streams = TRAIN[: (len(TRAIN) // (GROUPS * BATCH)) * GROUPS * BATCH].view(GROUPS * BATCH, -1)
    windows = (streams.shape[1] - 1) // length
    g, w = index % GROUPS, (index // GROUPS) % windows
    rows = streams[g * BATCH:(g + 1) * BATCH]
    return rows[:, w * length:(w + 1) * length], rows[:, w * length + 1:(w + 1) * length + 1]


def loss_fn(out, y, mask):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum") / out.shape[0]


def evaluate(model):
    out, _ = model(VALID[:-1].unsqueeze(0), None)
    return {"valid_bpc": float(F.cross_entropy(out[0], VALID[1:])) / math.log(2)}


spec = dni_dist.Spec(model=build, batch=get_batch, loss=loss_fn, evaluate=evaluate, stream_groups=GROUPS,
                     optimizer=lambda params: torch.optim.Adam(params, lr=3e-3), truncation=T, chunks=CHUNKS,
                     defaults={"steps": 300, "eval_every": 100, "workers": 2})

if __name__ == "__main__":
    from dni_dist.train import main
    sys.exit(main(sys.argv[1:], spec=spec))  # the command line over dni_dist.fit, for this spec
