"""The seed API against autograd: exact TBPTT at start, bootstrapped targets, learning, errors."""
import copy
import math

import pytest
import torch
from torch import nn

from dni_dist import Synthesizer
from dni_dist import targets as tg

from conftest import make_rnn as _rnn, random_synth as _random_synth


@pytest.mark.parametrize("kind,layers", [("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 3), ("rnn", 1)])
def test_fresh_synthesizer_is_exactly_tbptt(kind, layers):
    rnn = _rnn(kind, layers)
    ref = copy.deepcopy(rnn)
    synth = Synthesizer.for_rnn(rnn)
    x = torch.randn(4, 5, 3)
    h_a = h_b = None
    for chunk in x.split(2):
        out, h_a = rnn(chunk, h_a)
        loss = out.pow(2).sum()
        h_a = synth.backward_synthetic(h_a, loss)
        loss.backward()
        out, h_b = ref(chunk, h_b)
        out.pow(2).sum().backward()
        h_b = tg.detach(h_b)
    synth.step()
    for p, q in zip(rnn.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("kind,layers", [("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2)])
@pytest.mark.parametrize("discount", [1.0, 0.5])
@pytest.mark.parametrize("with_loss", [True, False])
def test_target_is_the_bootstrapped_gradient(kind, layers, discount, with_loss):
    """The synthesizer regresses on dL_c/dh_c + discount * J^T g_{c+1}, computed here independently."""
    rnn = _rnn(kind, layers)
    synth = _random_synth(rnn, discount=discount, factor=0.7)
    seen = []
    orig = synth.accumulate

    def spy(bounds, targets):
        seen.extend((tg.detach(b), tg.detach(t)) for b, t in zip(bounds, targets))
        return orig(bounds, targets)

    synth.accumulate = spy
    torch.manual_seed(2)
    x = torch.randn(9, 4, 3)
    chunks = x.split(3)
    h = None
    for c, chunk in enumerate(chunks):
        out, h = rnn(chunk, h)
        loss = out.pow(2).sum() + out.sum()
        h = synth.backward_synthetic(h, loss if with_loss else None, last=(c == len(chunks) - 1))
        loss.backward()
    synth.step()
    assert len(seen) == 2  # boundaries after chunks 0 and 1

    # independent reference: re-run each chunk from the boundary state as a leaf
    for c, (boundary, target) in enumerate(seen):
        start = tg.detach_requires_grad(boundary)
        out, end = rnn(chunks[c + 1], start)
        loss = out.pow(2).sum() + out.sum()
        grads = torch.autograd.grad(loss, list(tg.as_tuple(start)), retain_graph=True)
        expected = list(grads)
        if c + 1 < len(chunks) - 1:  # a synthetic gradient was injected at this chunk's end
            with torch.no_grad():
                flat = synth.net(tg.flatten_state(tg.detach(end)))
                g = tg.unflatten_state(tg.centre_over_batch(flat) * 0.7, end)
            jtg = torch.autograd.grad(list(tg.as_tuple(end)), list(tg.as_tuple(start)), list(tg.as_tuple(g)))
            expected = [e + discount * j for e, j in zip(expected, jtg)]
        for got, want in zip(tg.as_tuple(target), expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_no_gradient_counted_twice_in_either_call_form():
    """Both call forms give the parameters loss-gradient + J^T g, once."""
    grads = []
    for with_loss in (True, False):
        rnn = _rnn("lstm")
        synth = _random_synth(rnn)
        torch.manual_seed(3)
        x = torch.randn(4, 4, 3)
        out, h = rnn(x, None)
        loss = out.sum()
        synth.backward_synthetic(h, loss if with_loss else None)
        loss.backward()
        grads.append([p.grad.clone() for p in rnn.parameters()])
    rnn = _rnn("lstm")
    synth = _random_synth(rnn)
    out, h = rnn(x, None)
    g = synth.synthetic_gradient(h)
    torch.autograd.backward([out.sum(), *h], [None, *g])
    for a, b, ref in zip(*grads, rnn.parameters()):
        torch.testing.assert_close(a, ref.grad)
        torch.testing.assert_close(b, ref.grad)


def test_loss_value_unchanged_and_zero_grad_cannot_drop_the_synthetic_gradient():
    """Compared with references: the gradient after zero_grad is loss + J^T g, not the loss alone."""
    rnn = _rnn("gru")
    synth = _random_synth(rnn)
    x = torch.randn(3, 4, 3)
    out, h = rnn(x, None)
    loss = out.sum()
    before = loss.item()
    synth.backward_synthetic(h, loss)
    assert loss.item() == before
    rnn.zero_grad()  # the usage trap of the seed: harmless here, the gradient rides on loss
    loss.backward()
    got = rnn.weight_hh_l0.grad.clone()
    rnn.zero_grad()
    out, h = rnn(x, None)
    g = synth.synthetic_gradient(h)
    torch.autograd.backward([out.sum(), h], [None, g])
    torch.testing.assert_close(got, rnn.weight_hh_l0.grad)
    rnn.zero_grad()
    out, _ = rnn(x, None)
    out.sum().backward()
    assert not torch.allclose(got, rnn.weight_hh_l0.grad)  # the loss alone differs


def test_learns_a_deterministic_future_gradient():
    """Frozen dynamics; the future loss is 0.5*|A^k h|^2 / B, so dL/dh is linear in h."""
    torch.manual_seed(0)
    H, B = 8, 64
    A = torch.randn(H, H) / math.sqrt(H)
    enc = nn.RNNCell(4, H)
    synth = Synthesizer(H, is_lstm=False, lr=1e-2, centre=False)

    def episode(gen):
        x = torch.randn(B, 3, 4, generator=gen)
        h = torch.zeros(B, H)
        for t in range(3):
            h = enc(x[:, t], h)
        return h

    gen = torch.Generator().manual_seed(1)
    for _ in range(400):
        h = episode(gen)
        h = synth.backward_synthetic(h)  # boundary: no loss before it
        z = h
        for _ in range(4):
            z = z @ A.T
        loss = 0.5 * z.pow(2).sum() / B
        synth.backward_synthetic(z, loss, last=True)
        loss.backward()
        synth.step()
    held = episode(torch.Generator().manual_seed(99)).detach().requires_grad_()
    z = held
    for _ in range(4):
        z = z @ A.T
    true = torch.autograd.grad(0.5 * z.pow(2).sum() / B, held)[0]
    pred = synth(held)
    cos = torch.nn.functional.cosine_similarity(pred.flatten(), true.flatten(), dim=0)
    assert cos > 0.99, float(cos)


def test_an_unused_boundary_mid_stream_is_trained_toward_zero_and_a_sequence_end_is_dropped():
    """A state the user drops without step() (a stream restarted mid-window) is trained toward zero
    (use_improvement); the state returned by the last call before step() is the sequence's end:
    nothing follows it, so it is dropped, as the engine drops a sequence's end."""
    rnn = _rnn("gru")
    synth = Synthesizer.for_rnn(rnn)
    for _ in range(2):  # two sequences, no step() between them: the first one's last state is dropped mid-stream
        h = None
        for chunk in torch.randn(4, 2, 3).split(2):
            out, h = rnn(chunk, h)
            loss = out.sum()
            h = synth.backward_synthetic(h, loss)
            loss.backward()
    synth.step()
    h = None
    out, h = rnn(torch.randn(2, 2, 3), h)
    loss = out.sum()
    synth.backward_synthetic(h, loss)  # the next sequence starts afresh after step(): the end is dropped
    loss.backward()
    synth.step()
    assert synth.stats.zero_targets == 1 and synth.stats.dropped_ends == 1 and synth.stats.targets == 3
    synth2 = Synthesizer.for_rnn(rnn, use_improvement=False)
    for _ in range(2):
        out, h = rnn(torch.randn(2, 2, 3), None)
        loss = out.sum()
        synth2.backward_synthetic(h, loss)
        loss.backward()
    synth2.step()
    assert synth2.stats.zero_targets == 0 and synth2.stats.targets == 0


def test_nonfinite_prediction_is_never_injected():
    """Replaced by zeros on the device, counted, and warned about when the statistics are read."""
    rnn = _rnn("gru")
    synth = Synthesizer.for_rnn(rnn, gate=False)
    with torch.no_grad():
        synth.net[-1].bias.fill_(float("nan"))
    out, h = rnn(torch.randn(2, 2, 3), None)
    loss = out.sum()
    synth.backward_synthetic(h, loss)
    loss.backward()
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert synth.stats.nonfinite_predictions == 1
    assert all(torch.isfinite(p.grad).all() for p in rnn.parameters())


def test_nonfinite_target_is_dropped_and_weights_stay_finite():
    rnn = _rnn("gru")
    synth = Synthesizer.for_rnn(rnn)
    h = None
    for c in range(3):
        out, h = rnn(torch.randn(2, 2, 3), h)
        loss = out.sum() * (float("inf") if c == 1 else 1.0)
        h = synth.backward_synthetic(h, loss)
        loss.backward()
    synth.step()
    with pytest.warns(RuntimeWarning, match="target"):
        assert synth.stats.nonfinite_targets >= 1
    assert all(torch.isfinite(p).all() for p in synth.parameters())


@pytest.mark.parametrize("cell,is_lstm,shape", [(nn.LSTMCell, True, (5, 7)), (nn.GRUCell, False, (5, 7))])
def test_cells_and_device_dtype_follow_the_state(cell, is_lstm, shape):
    c = cell(3, 7).double()
    synth = Synthesizer(7, is_lstm=is_lstm)
    h = c(torch.randn(5, 3, dtype=torch.double))
    h2 = synth.backward_synthetic(h, tg.as_tuple(h)[0].sum())
    assert tg.as_tuple(h2)[0].shape == shape and tg.as_tuple(h2)[0].dtype == torch.double
    assert synth.net[-1].weight.dtype == torch.double


def _solve_then_vanish(gate: bool):
    """Phase 1: the future gradient is a learnable function of the state (the synthesizer learns
    it). Phase 2: the task is 'solved': the future gradient shrinks 1000x and turns into noise
    unrelated to the state. Returns injected RMS / target RMS at the end of each phase."""
    torch.manual_seed(0)
    H, B = 8, 64
    A = torch.randn(H, H) / math.sqrt(H)
    enc = nn.RNNCell(4, H)
    synth = Synthesizer(H, is_lstm=False, num_layers=1, lr=1e-2, gate=gate)
    gen = torch.Generator().manual_seed(1)
    ratios = []
    for phase in (0, 1):
        for _ in range(300 if phase == 0 else 600):
            x = torch.randn(B, 3, 4, generator=gen)
            h = torch.zeros(B, H)
            for t in range(3):
                h = enc(x[:, t], h)
            h = synth.backward_synthetic(h)
            if phase == 0:
                loss = 0.5 * (h @ A.T).pow(2).sum() / B
            else:
                loss = 1e-3 * (h * torch.randn(B, H, generator=gen)).sum() / B
            synth.backward_synthetic(h @ A.T, loss, last=True)
            loss.backward()
            synth.step()
        g = synth.synthetic_gradient(h.detach())
        true_rms = 1e-3 / B if phase else float(synth.target_ms.sqrt())  # phase 1: the noise's RMS
        ratios.append(float(g.pow(2).mean().sqrt()) / true_rms)
    return ratios, synth


@pytest.mark.slow
def test_a_solved_task_gets_no_injected_noise():
    """Issue 12's mechanism in miniature: once the true future gradient vanishes into noise, the
    ungated synthesizer (the behaviour before the fix) keeps injecting gradients larger than its
    targets; the gated one stops injecting, and turns back on while it predicts."""
    (learned, after), synth = _solve_then_vanish(gate=True)
    assert learned > 0.5 and synth.stats.gate < 0.05 and after < 0.5, (learned, after, synth.stats)
    (_, after_ungated), _ = _solve_then_vanish(gate=False)
    assert after_ungated > 5.0, after_ungated  # what the gate prevents: noise 12x the true gradient


def test_the_gate_and_scale_follow_loads_and_moves():
    """The gate and the scale live in buffers on the device: a load or a cast carries them."""
    a, b = (Synthesizer(4, is_lstm=False, num_layers=1, gate_warmup=0) for _ in range(2))
    assert a.injection_scale() == 0.0 and not a.scale_ready()
    b.fit.copy_(torch.tensor([0.3, 0.4, 1.0]))
    b.target_ms.fill_(2.0)
    a.load_state_dict(b.state_dict())
    assert a.injection_scale() == pytest.approx(1.0) and a.scale_ready()  # clamp(2 * 0.3 / 0.4, 0, 1)
    assert float(a._unit()) == pytest.approx(2.0 ** 0.5)
    a.fit[0] = 0.1
    a.double()
    assert a.injection_scale() == pytest.approx(0.5)
    a.finish_update(torch.tensor([1.0, 3.0, 0.2, 0.4, 3.0], dtype=torch.float64))  # evidence of one target
    assert a.fit.dtype == torch.float64 and a.fit[2].item() == pytest.approx(0.99 * 1.0 + 0.01 * 3.0)


def test_the_gate_is_read_on_a_schedule_and_the_schedule_is_checkpointed():
    """gate_check_every=m: the host reads the device's gate at ticks 0, m, 2m, ... and holds it in
    between; a state saved mid-way resumes reading at the same ticks with the same view."""
    s = Synthesizer(4, is_lstm=False, num_layers=1, gate_warmup=0, gate_check_every=3)
    s.target_ms.fill_(1.0)
    seen = []
    for i in range(7):
        if i == 1:  # the evidence opens the gate on the device after the first read
            s.fit.copy_(torch.tensor([0.3, 0.4, 1.0]))
        s.tick()
        seen.append(s.gate_open())
    assert seen == [False, False, False, True, True, True, True]
    t = Synthesizer(4, is_lstm=False, num_layers=1, gate_warmup=0, gate_check_every=3)
    t.load_state_dict(s.state_dict())
    t.fit.zero_()  # shut on the device: read again at tick 9, not before
    views = []
    for _ in range(3):
        t.tick()
        views.append(t.gate_open())
    assert views == [True, True, False]


def test_gate_warmup_keeps_the_gate_shut_until_enough_evidence():
    """gate_warmup=n: nothing is injected before n updates of evidence, however good the first
    ones look (a ratio of running sums over a handful of targets is noise); the count is
    checkpointed with the sums."""
    s = Synthesizer(4, is_lstm=False, num_layers=1, gate_warmup=5)
    s.target_ms.fill_(1.0)
    good = torch.tensor([1.0, 1.0, 0.3, 0.4, 1.0], dtype=torch.float64)
    scales = []
    for _ in range(6):
        s.finish_update(good)
        scales.append(s.injection_scale())
    assert scales[:4] == [0.0] * 4 and scales[4] == pytest.approx(1.0) and s.stats.gate == pytest.approx(1.0)
    fresh = Synthesizer(4, is_lstm=False, num_layers=1, gate_warmup=5)
    fresh.load_state_dict(s.state_dict())
    assert fresh.injection_scale() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="gate_warmup"):
        Synthesizer(4, gate_warmup=-1)


@pytest.mark.parametrize("every,trained,passes", [(1, 9, 8), (3, 3, 3)])
def test_train_every_trains_one_cut_in_m_and_injects_at_every_cut(every, trained, passes, monkeypatch):
    """train_every=m: cuts 0, m, 2m, ... of the run are regressed on (and only their next chunk
    pays the J^T g pass); every cut still gets its synthetic gradient. 10 chunks, the last one
    with last=True: 9 cuts."""
    torch.manual_seed(0)
    rnn, head = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 1)
    synth = Synthesizer.for_rnn(rnn, train_every=every)
    monkeypatch.setattr(Synthesizer, "gate_open", lambda self: True)  # an open gate: J^T g is needed
    count = {"vjp": 0, "predict": 0}
    vjp, predict = tg.synthetic_vjp, Synthesizer.synthetic_gradient

    def counted(name, fn):
        def wrapped(*a, **k):
            count[name] += 1
            return fn(*a, **k)
        return wrapped
    monkeypatch.setattr(tg, "synthetic_vjp", counted("vjp", vjp))
    monkeypatch.setattr(Synthesizer, "synthetic_gradient", counted("predict", predict))
    x, state = torch.randn(2, 30, 3), None
    for c in range(10):
        out, state = rnn(x[:, 3 * c:3 * c + 3], state)
        loss = head(out).square().mean()
        state = synth.backward_synthetic(state, loss, last=c == 9)
        loss.backward()
    synth.step()
    assert synth.stats.targets == trained and count["vjp"] == passes and count["predict"] == 9
    with pytest.raises(ValueError, match="train_every"):
        Synthesizer(4, train_every=0)
    with pytest.raises(ValueError, match="train_every=2, lookahead=2"):
        Synthesizer(4, train_every=2, lookahead=2)


def test_orthogonal_injection_has_no_component_along_the_state():
    """orthogonal=True: per layer, part (h, c) and batch row the injected gradient is orthogonal
    to the state it is injected at; a prediction that only points along the state injects nothing,
    and the gate's evidence is measured on what is injected (so it stays shut)."""
    torch.manual_seed(0)
    state = (torch.randn(2, 5, 4), torch.randn(2, 5, 4))  # 2 layers, batch 5, H=4
    flat = tg.flatten_state(state)
    for orthogonal in (False, True):
        s = Synthesizer(4, is_lstm=True, num_layers=2, orthogonal=orthogonal, gate_warmup=0, centre=False)
        with torch.no_grad():
            s.net[-1].weight.copy_(torch.randn(16, 16))
        s._scale = lambda: 1.0
        g = s.synthetic_gradient(state)
        dots = torch.stack([(gi * si).sum(-1) for gi, si in zip(g, state)])  # (part, layer, row)
        assert torch.allclose(dots, torch.zeros_like(dots), atol=1e-5) == orthogonal
    along = Synthesizer(4, is_lstm=True, num_layers=2, orthogonal=True, gate_warmup=0, centre=False)
    with torch.no_grad():
        along.net[-1].weight.copy_(torch.eye(16))  # predicts the state itself
    along.target_ms.fill_(1.0)
    target = tg.like([3 * t for t in state], state)  # a target the prediction explains perfectly
    ev = along.accumulate([state], [target])
    assert ev[2].abs() < 1e-6 and ev[3].abs() < 1e-6  # <p, d> and <p, p> of the injected direction: 0
    assert torch.allclose(tg.flatten_state(along.synthetic_gradient(state)), torch.zeros_like(flat), atol=1e-6)
    with pytest.raises(ValueError, match="orthogonal"):
        Synthesizer(4, orthogonal=1)
