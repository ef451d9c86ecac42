"""dni_dist.regression: the linear synthesizer's regression gradient without autograd is bit for bit
what ``loss.backward()`` adds (one cut or several, a cut masked out, ``.grad`` empty or bound to a
buffer that already holds a gradient), and a synthesizer with a hidden layer still goes through autograd."""
import pytest
import torch
from torch import nn

from dni_dist import Synthesizer, regression


def cuts_for(layer, shapes, keeps, seed):
    g = torch.Generator().manual_seed(seed)
    cuts = []
    for (b, dim), keep in zip(shapes, keeps):
        s = torch.randn(b, dim, generator=g)
        d = torch.randn(b, dim, generator=g) * 1e-2
        cuts.append((s, d, torch.tensor(keep)))
    return cuts


@pytest.mark.parametrize("keeps", [[True], [True, True, True], [True, False, True], [False]])
@pytest.mark.parametrize("preset", [False, True])
def test_the_gradient_is_autograds_bit_for_bit(keeps, preset):
    torch.manual_seed(0)
    dim = 24  # b * dim not a power of two: the 2/N factor rounds
    a, b = nn.Linear(dim, dim), nn.Linear(dim, dim)
    b.load_state_dict(a.state_dict())
    if preset:  # the engine binds .grad to a buffer that already holds this tick's other cuts
        for p, q in zip(a.parameters(), b.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
    cuts = cuts_for(a, [(7, dim)] * len(keeps), keeps, seed=len(keeps))
    loss = None
    for s, d, keep in cuts:
        term = nn.functional.mse_loss(a(s), d) * keep
        loss = term if loss is None else loss + term
    loss.backward()
    with torch.no_grad():
        mine = [(s, b(s), d, keep) for s, d, keep in cuts]
    regression.add_linear_grads(b, mine)
    assert torch.equal(a.weight.grad, b.weight.grad) and torch.equal(a.bias.grad, b.bias.grad)
    assert torch.equal(regression.loss_of(mine), loss.detach())


def test_a_hidden_layer_goes_through_autograd(monkeypatch):
    calls = []
    monkeypatch.setattr(regression, "add_linear_grads", lambda *a: calls.append(a))
    for hidden, expected in ((1, 0), (0, 1)):
        calls.clear()
        synth = Synthesizer(4, is_lstm=False, num_layers=1, hidden_layers=hidden)
        synth.target_ms.fill_(1.0)
        synth.accumulate([torch.randn(3, 4)], [torch.randn(3, 4)])
        assert len(calls) == expected
        if hidden:
            assert all(p.grad is not None for p in synth.net.parameters())
