"""The seed README's first loop (nn.LSTM + torch.split), runnable: three added lines, and its
plain-TBPTT twin (the same loop with ``detach()`` instead), both printed.

Task: delayed recall (the target is the input bit 5 steps back) with truncation 4, so plain
truncated BPTT never sees a gradient that links a target to its input. The loss counts the first
5 steps too (their target is always 0), which both modes learn; the rest only DNI can. DNI needs
about 1000 sequences to find the link, so the default is 1500 (about 2.5 minutes for both runs on
one CPU core; at 300 sequences TBPTT is ahead, 0.605 vs 0.650).
    python examples/seed_lstm.py [--batches 1500] [--seed 0]
"""
import argparse

import torch
from torch import nn

import dni_dist  # NEW LINE: the package

MODEL_SIZE, TBPTT, BATCH_SIZE, DELAY = 32, 4, 32, 5


def dataloader(batches, seed, length=40):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        X = torch.randint(0, 2, (BATCH_SIZE, length, 1), generator=gen).float()
        y = torch.zeros_like(X)
        y[:, DELAY:] = X[:, :-DELAY]
        yield X, y


def train(use_dni: bool, batches: int, seed: int) -> float:
    torch.manual_seed(seed)
    rnn = nn.LSTM(input_size=1, hidden_size=MODEL_SIZE, batch_first=True)
    head = nn.Linear(MODEL_SIZE, 1)
    optim = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)
    loss_func = nn.BCEWithLogitsLoss(reduction="sum")

    synth = dni_dist.Synthesizer(size=MODEL_SIZE, is_lstm=True)  # NEW LINE (1)

    recent = []
    for i, (X, y) in enumerate(dataloader(batches, seed)):
        hn = None
        total = 0.0
        for split, target in zip(torch.split(X, TBPTT, dim=1), torch.split(y, TBPTT, dim=1)):
            out, hn = rnn(split, hn)
            loss = loss_func(head(out), target) / BATCH_SIZE
            total += loss.item()
            if use_dni:
                hn = synth.backward_synthetic(hn, loss)  # NEW LINE (2): before loss.backward()
            else:
                hn = tuple(h.detach() for h in hn)  # the TBPTT twin
            loss.backward()
            optim.step()
            optim.zero_grad()
        if use_dni:
            synth.step()  # NEW LINE (3): after the sequence
        recent = (recent + [total / (X.shape[1] - DELAY)])[-50:]
        if (i + 1) % 100 == 0:
            print(f"{'dni' if use_dni else 'tbptt':>5}  batch {i + 1:4d}  loss per target step "
                  f"{sum(recent) / len(recent):.4f}  (chance 0.693)", flush=True)
    return sum(recent) / len(recent)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    got = {mode: train(mode == "dni", args.batches, args.seed) for mode in ("tbptt", "dni")}
    print(f"final loss per target step (last 50 batches): tbptt {got['tbptt']:.4f}   dni {got['dni']:.4f}")
