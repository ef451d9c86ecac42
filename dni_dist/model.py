"""A small sequence model (RNN core + linear head) whose loss is defined per chunk.

Loss units: summed over time steps and averaged over the batch, so a chunk's loss and the
synthetic gradient of "all future losses" are in the same units whatever T is.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .targets import State

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class SeqModel(nn.Module):
    """``nn.LSTM``/``GRU``/``RNN`` (batch_first) with a linear readout.

    Args:
        input_size: features per step (float inputs) or vocabulary size (token inputs, ``vocab=True``).
        hidden_size, num_layers, cell: the RNN core.
        output_size: logits per step.
        loss: ``"bce"`` (independent bits, float targets) or ``"ce"`` (classes, long targets).
        vocab: inputs are token ids embedded with ``nn.Embedding(input_size, hidden_size)``.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *, num_layers: int = 1,
                 cell: str = "lstm", loss: str = "bce", vocab: bool = False):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}; got {cell!r}")
        if loss not in ("bce", "ce"):
            raise ValueError(f"loss must be 'bce' or 'ce'; got {loss!r}")
        self.cell, self.loss_kind, self.vocab = cell, loss, vocab
        self.embed = nn.Embedding(input_size, hidden_size) if vocab else None
        self.rnn = CELLS[cell](hidden_size if vocab else input_size, hidden_size, num_layers=num_layers,
                               batch_first=True)
        self.head = nn.Linear(hidden_size, output_size)

    @property
    def is_lstm(self) -> bool:
        return self.cell == "lstm"

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        z = torch.zeros(self.rnn.num_layers, batch, self.rnn.hidden_size, device=device, dtype=dtype)
        return (z, z.clone()) if self.is_lstm else z

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        inp = self.embed(x) if self.embed is not None else x
        out, state = self.rnn(inp, state)
        return self.head(out), state

    def step_losses(self, logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-(batch, step) loss, masked: shape (B, T)."""
        if self.loss_kind == "bce":
            per = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(-1)
        else:
            per = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        return per * mask

    def chunk_loss(self, x, y, mask, state: State) -> tuple[torch.Tensor, State]:
        """Loss of one chunk (sum over steps, mean over batch) and the final state."""
        logits, state = self(x, state)
        return self.step_losses(logits, y, mask).sum() / x.shape[0], state
