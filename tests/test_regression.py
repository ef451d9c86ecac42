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


def test_a_preset_grad_is_added_to_in_place():
    """The engine binds ``.grad`` to its flat buffer: the gradient must land there, not in a new tensor."""
    layer = nn.Linear(5, 5)
    buffers = [torch.ones_like(p) for p in layer.parameters()]
    for p, b in zip(layer.parameters(), buffers):
        p.grad = b
    s, d = torch.randn(3, 5), torch.randn(3, 5)
    with torch.no_grad():
        regression.add_linear_grads(layer, [(s, layer(s), d, torch.tensor(True))])
    assert all(p.grad is b for p, b in zip(layer.parameters(), buffers))
    assert not torch.equal(buffers[0], torch.ones_like(buffers[0]))


def test_under_autocast_the_regression_goes_through_autograd(monkeypatch):
    """Under autocast the layer runs in bfloat16 and only autograd's backward is the reference: the
    update equals the autograd path's, and nothing raises (a bf16 gradient on fp32 weights would)."""
    states = [[torch.randn(6, 4) for _ in range(2)] for _ in range(3)]

    def run(fast):
        torch.manual_seed(0)
        synth = Synthesizer(4, is_lstm=False, num_layers=1)
        if not fast:
            monkeypatch.setattr(regression, "exact_for", lambda *a: False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for bounds, tars in ((s[:1], s[1:]) for s in states):
                synth.finish_update(synth.accumulate(bounds, tars))
        monkeypatch.undo()
        return synth.state_dict(), synth.stats.last_loss

    (fast, fast_loss), (slow, slow_loss) = run(True), run(False)
    assert all(torch.equal(fast[k], slow[k]) for k in fast) and fast_loss == slow_loss
    assert not regression.exact_for(Synthesizer(4, is_lstm=False, num_layers=1, hidden_layers=1).net, torch.device("cpu"))


def test_the_last_loss_survives_a_cast_of_the_synthesizer():
    """last_loss was stored in the synthesizer's dtype (float32 here); a later .double() must not change it."""
    torch.manual_seed(0)
    synth = Synthesizer(4, is_lstm=False, num_layers=1)
    synth.target_ms.fill_(2.0)  # a unit of sqrt(2): the loss in gradient units is not a float32 number before rounding
    synth.finish_update(synth.accumulate([torch.randn(3, 4)], [torch.randn(3, 4)]))
    before = synth.stats.last_loss
    synth.double()
    assert synth.stats.last_loss == before
