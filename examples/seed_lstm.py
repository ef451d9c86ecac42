"""The seed README's first loop (nn.LSTM + torch.split), runnable: three added lines.

Task: delayed recall (the target is the input bit 5 steps back) with truncation 4, so plain
truncated BPTT never sees a gradient that links a target to its input.
    python examples/seed_lstm.py
"""
import _stdlib_first  # noqa: F401  (keeps examples/copy.py from shadowing the stdlib's copy)
import torch
from torch import nn

import dni_dist  # NEW LINE: the package

torch.set_num_threads(1)
torch.manual_seed(0)
MODEL_SIZE, TBPTT, BATCH_SIZE, DELAY = 32, 4, 32, 5


def dataloader(batches=300, length=40):
    gen = torch.Generator().manual_seed(0)
    for _ in range(batches):
        X = torch.randint(0, 2, (BATCH_SIZE, length, 1), generator=gen).float()
        y = torch.zeros_like(X)
        y[:, DELAY:] = X[:, :-DELAY]
        yield X, y


rnn = nn.LSTM(input_size=1, hidden_size=MODEL_SIZE, batch_first=True)
head = nn.Linear(MODEL_SIZE, 1)
optim = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)
loss_func = nn.BCEWithLogitsLoss(reduction="sum")

synth = dni_dist.Synthesizer(size=MODEL_SIZE, is_lstm=True)  # NEW LINE (1)

for i, (X, y) in enumerate(dataloader()):
    hn = (torch.zeros(1, BATCH_SIZE, MODEL_SIZE), torch.zeros(1, BATCH_SIZE, MODEL_SIZE))
    total = 0.0
    for split, target in zip(torch.split(X, TBPTT, dim=1), torch.split(y, TBPTT, dim=1)):
        out, hn = rnn(split, hn)
        loss = loss_func(head(out), target) / BATCH_SIZE
        total += loss.item()

        hn = synth.backward_synthetic(hn, loss)  # NEW LINE (2): before loss.backward()

        loss.backward()
        optim.step()
        optim.zero_grad()

    synth.step()  # NEW LINE (3): after the sequence
    if (i + 1) % 50 == 0:
        print(f"batch {i + 1:4d}  loss per step {total / X.shape[1]:.4f}  (chance 0.693)", flush=True)
