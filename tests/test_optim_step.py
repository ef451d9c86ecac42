"""dni_dist.optim.step: the synthesizer's Adam stepped by its fused kernel directly is bit for bit
``Adam(fused=True).step()``, skips (and keeps its step counts) where ``ok`` is False, follows a
changed learning rate, and leaves any other optimizer to its own ``step()``."""
import pytest
import torch
from torch import nn

from dni_dist import optim


def pair(kind=torch.optim.Adam, **kw):
    torch.manual_seed(0)
    a = nn.Linear(6, 5)
    b = nn.Linear(6, 5)
    b.load_state_dict(a.state_dict())
    return a, b, kind(a.parameters(), lr=1e-2, **kw), kind(b.parameters(), lr=1e-2, **kw)


def set_grads(*nets, seed):
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=g) for p in nets[0].parameters()]
    for net in nets:
        for p, gr in zip(net.parameters(), grads):
            p.grad = gr.clone()


def test_the_direct_step_equals_fused_adam_bit_for_bit():
    a, b, oa, ob = pair(fused=True)
    for i, ok in enumerate([True, True, False, True, True]):
        if i == 3:
            oa.param_groups[0]["lr"] = ob.param_groups[0]["lr"] = 3e-3
        set_grads(a, b, seed=i)
        if ok:
            oa.step()
        optim.step(ob, torch.tensor(ok))
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(oa.state[p]["step"], ob.state[q]["step"]) and float(ob.state[q]["step"]) == 4
        assert torch.equal(oa.state[p]["exp_avg_sq"], ob.state[q]["exp_avg_sq"])


def test_the_direct_step_is_taken_and_skipped_by_the_kernel(monkeypatch):
    a, b, _, ob = pair(fused=True)
    set_grads(b, seed=0)
    optim.step(ob, torch.tensor(True))  # creates the state through step()
    calls = []
    monkeypatch.setattr(type(ob), "step", lambda self, *x: calls.append(1))
    before = [p.clone() for p in b.parameters()]
    set_grads(b, seed=1)
    optim.step(ob, torch.tensor(False))
    assert calls == [] and all(torch.equal(p, q) for p, q in zip(before, b.parameters()))


@pytest.mark.parametrize("kind", [torch.optim.SGD, torch.optim.Adam])
def test_other_optimizers_step_themselves(kind):
    a, b, oa, ob = pair(kind)  # SGD; Adam not fused
    set_grads(a, b, seed=0)
    oa.step()
    optim.step(ob, torch.tensor(True))
    set_grads(a, b, seed=1)
    optim.step(ob, torch.tensor(False))  # read: no step
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_fused_adam_that_loaded_a_plain_adams_state_steps_the_plain_way():
    a, b, oa, ob = pair(fused=True)
    plain = torch.optim.Adam(b.parameters(), lr=1e-2)
    set_grads(b, seed=0)
    plain.step()
    ob.load_state_dict(plain.state_dict())  # the group says fused=None now; the defaults still say fused
    set_grads(b, seed=1)
    optim.step(ob, torch.tensor(True))  # neither the kernel nor found_inf: a plain step, no assertion error
    optim.step(ob, torch.tensor(False))
    assert float(ob.state[next(iter(b.parameters()))]["step"]) == 2


def test_a_step_wrapped_on_the_instance_is_called_and_ok_must_be_a_bool():
    a, b, _, ob = pair(fused=True)
    set_grads(b, seed=0)
    optim.step(ob, torch.tensor(True))
    calls, inner = [], ob.step
    ob.step = lambda *x: calls.append(1) or inner(*x)
    set_grads(b, seed=1)
    optim.step(ob, torch.tensor(True))
    assert calls == [1]
    with pytest.raises(TypeError, match="bool"):
        optim.step(ob, torch.tensor(1))
