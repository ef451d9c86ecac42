"""The seed README's second loop (nn.LSTMCell, truncated by a counter), runnable, and its
plain-TBPTT twin, both printed.

Fixed from the seed's text: the cell's state is (batch, hidden), the accumulated loss is reset
after each window, and the counter truncates every TBPTT steps. Task: recall the bit DELAY steps
back in one endless stream (DELAY > TBPTT: truncation never links a target to its input).
Measured with the defaults (6000 steps, seed 0): TBPTT 0.662, DNI 0.690 per step — DNI does not
win here yet (not diagnosed; a suspect: one boundary per update at batch 16 gives the
synthesizer few, noisy targets). seed_lstm.py is the example where it does win (docs/tuning.md).
    python examples/seed_cell.py [--steps 6000] [--seed 0]
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
