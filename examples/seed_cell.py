"""The seed README's second loop (nn.LSTMCell, truncated by a counter), runnable.

Fixed from the seed's text: the cell's state is (batch, hidden), the accumulated loss is reset
after each window, and the counter truncates every TBPTT steps.
    python examples/seed_cell.py
"""
import _stdlib_first  # noqa: F401  (keeps examples/copy.py from shadowing the stdlib's copy)
import torch
from torch import nn

import dni_dist

torch.set_num_threads(1)
torch.manual_seed(0)
MODEL_SIZE, TBPTT, BATCH_SIZE, DELAY, STEPS = 32, 5, 16, 6, 6000

rnn_cell = nn.LSTMCell(input_size=1, hidden_size=MODEL_SIZE)
head = nn.Linear(MODEL_SIZE, 1)
optim = torch.optim.Adam([*rnn_cell.parameters(), *head.parameters()], lr=1e-3)
loss_func = nn.BCEWithLogitsLoss(reduction="sum")

synth = dni_dist.Synthesizer(size=MODEL_SIZE, is_lstm=True)  # NEW LINE (1)

gen = torch.Generator().manual_seed(0)
stream = torch.randint(0, 2, (STEPS + DELAY, BATCH_SIZE, 1), generator=gen).float()
hn = (torch.zeros(BATCH_SIZE, MODEL_SIZE), torch.zeros(BATCH_SIZE, MODEL_SIZE))
counter, losses, running = 0, 0, []
for t in range(DELAY, STEPS + DELAY):  # one long stream: the state is never reset
    X, y = stream[t], stream[t - DELAY]
    hn = rnn_cell(X, hn)
    loss = loss_func(head(hn[0]), y) / BATCH_SIZE
    losses = losses + loss
    running.append(loss.item())
    counter += 1
    if counter == TBPTT:
        hn = synth.backward_synthetic(hn, losses)  # NEW LINE (2): before losses.backward()
        losses.backward()
        optim.step()
        optim.zero_grad()
        synth.step()  # NEW LINE (3): after each truncation window
        counter, losses = 0, 0
    if (t - DELAY + 1) % 1000 == 0:
        print(f"step {t - DELAY + 1:5d}  loss per step {sum(running[-1000:]) / 1000:.4f}  (chance 0.693)", flush=True)
