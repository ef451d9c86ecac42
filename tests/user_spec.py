"""A model, data, loss and optimizer a user might bring: a GRU regressing a running sum, with SGD.
Module-level functions so spawned processes and Ray actors can import them by name."""
import torch
from torch import nn

import dni_dist

T, CHUNKS, B = 3, 4, 6


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(2, 5, batch_first=True)
        self.out = nn.Linear(5, 1)

    def forward(self, x, state):
        h, state = self.rnn(x, state)
        return self.out(h), state


def build():
    return Regressor()


def get_batch(index):
    g = torch.Generator().manual_seed(1000 + index)
    x = torch.randn(B, CHUNKS * T, 2, generator=g)
    y = torch.cumsum(x[..., :1], dim=1) * 0.3
    return x, y


def loss_fn(out, y, mask):
    assert mask is None
    return ((out - y) ** 2).mean()


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.5)


def evaluate(model):
    x, y = get_batch(10_000)
    out, _ = model(x, None)
    return {"mse": float(loss_fn(out, y, None))}


spec = dni_dist.Spec(model=build, batch=get_batch, loss=loss_fn, optimizer=sgd, evaluate=evaluate,
                     synthesizer={"lr": 1e-2, "gate_warmup": 0})
stream_spec = dni_dist.Spec(model=build, batch=get_batch, loss=loss_fn, optimizer=sgd, stream_groups=2,
                            synthesizer={"lr": 1e-2, "gate_warmup": 0})


def nan_after_two(index):
    """Data that turns to NaN from batch 2 on: a run over it must stop, not exit 0."""
    x, y = get_batch(index)
    return (x * float("nan"), y) if index >= 2 else (x, y)


nan_spec = dni_dist.Spec(model=build, batch=nan_after_two, loss=loss_fn, optimizer=sgd)


def slow_batch(index):
    """A slow data source (0.2 s a batch): the run lasts longer than 4 x a short --timeout-s."""
    import time
    time.sleep(0.2)
    return get_batch(index)


slow_spec = dni_dist.Spec(model=build, batch=slow_batch, loss=loss_fn, optimizer=sgd)
