"""The seed README's second loop (nn.LSTMCell, truncated by a counter), runnable, and its
plain-TBPTT twin, both printed.

Fixed from the seed's text: the cell's state is (batch, hidden), the accumulated loss is reset
after each window, and the counter truncates every TBPTT steps. Task: recall the bit DELAY=5
steps back in one endless stream, truncated every TBPTT=4 steps (truncation never links a
target to its input; the same task as seed_lstm.py, without sequence ends).
Measured with the defaults (30,000 steps, batch 32, 2-core CPU, a few minutes for both runs),
loss per step over the last 1000 steps, TBPTT vs DNI: seed 0 0.662 vs 0.587, seed 1 0.689 vs
0.608, seed 2 0.688 vs 0.328 (chance 0.693). The release before used DELAY=6, TBPTT=5, batch 16
and 6000 steps: one synthesizer update per 5 steps gave it 1200 updates, too few to find the
link (TBPTT 0.662 vs DNI 0.690), so the example now runs 7,500 windows of 32 streams.
    python examples/seed_cell.py [--steps 30000] [--seed 0]
"""
import argparse

import torch
from torch import nn

import dni_dist

MODEL_SIZE, TBPTT, BATCH_SIZE, DELAY = 32, 4, 32, 5


def train(use_dni: bool, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    rnn_cell = nn.LSTMCell(input_size=1, hidden_size=MODEL_SIZE)
    head = nn.Linear(MODEL_SIZE, 1)
    optim = torch.optim.Adam([*rnn_cell.parameters(), *head.parameters()], lr=1e-3)
    loss_func = nn.BCEWithLogitsLoss(reduction="sum")

    synth = dni_dist.Synthesizer(size=MODEL_SIZE, is_lstm=True)  # NEW LINE (1)

    gen = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, 2, (steps + DELAY, BATCH_SIZE, 1), generator=gen).float()
    hn = (torch.zeros(BATCH_SIZE, MODEL_SIZE), torch.zeros(BATCH_SIZE, MODEL_SIZE))
    counter, losses, running = 0, 0, []
    for t in range(DELAY, steps + DELAY):  # one long stream: the state is never reset
        X, y = stream[t], stream[t - DELAY]
        hn = rnn_cell(X, hn)
        loss = loss_func(head(hn[0]), y) / BATCH_SIZE
        losses = losses + loss
        running.append(loss.item())
        counter += 1
        if counter == TBPTT:
            if use_dni:
                hn = synth.backward_synthetic(hn, losses)  # NEW LINE (2): before losses.backward()
            else:
                hn = tuple(h.detach() for h in hn)  # the TBPTT twin
            losses.backward()
            optim.step()
            optim.zero_grad()
            if use_dni:
                synth.step()  # NEW LINE (3): after each truncation window
            counter, losses = 0, 0
        if (t - DELAY + 1) % 1000 == 0:
            print(f"{'dni' if use_dni else 'tbptt':>5}  step {t - DELAY + 1:5d}  loss per step "
                  f"{sum(running[-1000:]) / 1000:.4f}  (chance 0.693)", flush=True)
    return sum(running[-1000:]) / 1000


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    got = {mode: train(mode == "dni", args.steps, args.seed) for mode in ("tbptt", "dni")}
    print(f"final loss per step (last 1000 steps): tbptt {got['tbptt']:.4f}   dni {got['dni']:.4f}")
