"""Two-step targets (``Synthesizer(lookahead=2)``) in the seed API and the reference loop, checked
against autograd through two chunks. The engine's are checked in test_engine.py."""
import pytest
import torch
from torch import nn

from dni_dist import Synthesizer
from dni_dist import targets as tg

from conftest import make_rnn as _rnn, random_synth as _random_synth


def _check_two_step_targets(seen, injected, chunk, n, discount, weight):
    """Each regressed (cut, target) against autograd: the gradient at the cut before chunk c of
    L_c + (1-w) discount <g_{c+1}, h_{c+1}> + w (L_{c+1} + discount <g_{c+2}, h_{c+2}>), with
    ``chunk(c, start) -> (loss, end)`` and the recorded injections; the last cut's is exact."""
    def dot(g, h):
        return sum((a * b).sum() for a, b in zip(tg.as_tuple(g), tg.as_tuple(h)))

    for c, (cut, target) in enumerate(seen, start=1):
        start = tg.detach_requires_grad(cut)
        loss, end = chunk(c, start)
        if c == n - 1:
            total = loss  # the last chunk: its exact gradient
        else:
            loss2, end2 = chunk(c + 1, end)
            later = loss2 if c + 1 == n - 1 else loss2 + discount * dot(injected[c + 1], end2)
            total = loss + (1 - weight) * discount * dot(injected[c], end) + weight * later
        want = torch.autograd.grad(total, list(tg.as_tuple(start)))
        for got, expect in zip(tg.as_tuple(target), want):
            torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("discount,weight", [(0.5, 1.0), (0.5, 0.3), (1.0, 1.0)])
def test_two_step_target_is_two_chunks_of_true_gradient(cell, discount, weight):
    """lookahead=2: the cut before chunk c regresses on the gradient at that cut of
    L_c + (1-w) * discount * <g_{c+1}, h_{c+1}> + w * (L_{c+1} + discount * <g_{c+2}, h_{c+2}>),
    computed here by autograd through both chunks (weights frozen by lr=0, g recorded)."""
    from dni_dist import SeqModel
    from dni_dist.loops import train_batch
    torch.manual_seed(0)
    model = SeqModel(2, 5, 2, cell=cell)
    synth = _random_synth(model.rnn, discount=discount, factor=0.7, lookahead=2, lookahead_weight=weight)
    seen, injected = [], []
    acc, inj = synth.accumulate, synth.synthetic_gradient

    def spy_acc(bounds, targets):
        seen.extend((tg.detach(b), tg.detach(t)) for b, t in zip(bounds, targets))
        return acc(bounds, targets)

    def spy_inj(state):
        g = inj(state)
        injected.append(tg.detach(g))
        return g

    synth.accumulate, synth.synthetic_gradient = spy_acc, spy_inj
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(2)
    T, n = 3, 5
    x, y, m = torch.randn(4, T * n, 2), torch.rand(4, T * n, 2).round(), torch.ones(4, T * n)
    train_batch(model, synth, opt, x, y, m, T, "dni")
    assert len(seen) == n - 1 and len(injected) == n - 1  # cuts before chunks 1..n-1; nothing at the end

    def chunk(c, s):
        sl = slice(c * T, (c + 1) * T)
        return model.chunk_loss(x[:, sl], y[:, sl], m[:, sl], s)

    _check_two_step_targets(seen, injected, chunk, n, discount, weight)


def _users_loop(kind, gamma, w, T, n, step_after=None, drop_after=None):
    """A plain TBPTT loop over a user's nn.LSTM/nn.GRU and head with the seed API (lookahead=2),
    SGD changing the weights after every chunk; ``synth.step()`` also after chunk ``step_after``,
    and the state after chunk ``drop_after`` dropped (the next chunk starts afresh). Returns every
    regressed (cut, target), the injected gradients, and ``chunk(c, start) -> (loss, end)`` with
    the weights chunk c ran with (recorded before its forward)."""
    from torch.func import functional_call
    rnn = _rnn(kind, h=5)
    head = nn.Linear(5, 2)
    synth = _random_synth(rnn, discount=gamma, factor=0.7, lookahead=2, lookahead_weight=w)
    seen, injected = [], []
    acc, inj = synth.accumulate, synth.synthetic_gradient
    synth.accumulate = lambda b, t: seen.extend(zip(map(tg.detach, b), map(tg.detach, t))) or acc(b, t)
    synth.synthetic_gradient = lambda s: injected.append(inj(s)) or injected[-1]
    opt = torch.optim.SGD(list(rnn.parameters()) + list(head.parameters()), lr=0.2)
    torch.manual_seed(2)
    x, y = torch.randn(T * n, 4, 3), torch.randn(T * n, 4, 2)  # (time, batch, features): nn.LSTM's default
    weights, h = [], None
    for c in range(n):
        if drop_after is not None and c == drop_after + 1:
            h = None  # start afresh, as after an epoch, without having said last=True
        weights.append([{k: v.detach().clone() for k, v in m.named_parameters()} for m in (rnn, head)])
        out, hn = rnn(x[c * T:(c + 1) * T], h)
        loss = (head(out) - y[c * T:(c + 1) * T]).pow(2).mean()
        h = synth.backward_synthetic(hn, loss, last=c == n - 1, model=rnn, inputs=x[c * T:(c + 1) * T])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if c == step_after:
            synth.step()
    synth.step()

    def chunk(c, s):
        wr, wh = weights[c]
        out, end = functional_call(rnn, wr, (x[c * T:(c + 1) * T], s))
        return (functional_call(head, wh, (out,)) - y[c * T:(c + 1) * T]).pow(2).mean(), end

    return seen, injected, chunk


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_two_step_targets_in_a_users_own_loop_use_the_weights_each_chunk_ran_with(kind):
    """The seed API with lookahead=2 in a plain TBPTT loop, the optimizer changing the weights
    after every chunk: the cut before chunk c regresses on the gradient of
    L_c + (1-w) gamma <g_{c+1}, h_{c+1}> + w (L_{c+1} + gamma <g_{c+2}, h_{c+2}>), each chunk
    computed with the weights it ran with. A window ends mid-sequence after chunk 2 (a stream goes
    on): the waiting cut must still complete."""
    gamma, w, n = 0.5, 0.6, 5
    seen, injected, chunk = _users_loop(kind, gamma, w, 3, n, step_after=2)
    assert len(seen) == n - 1 and len(injected) == n - 1
    _check_two_step_targets(seen, injected, chunk, n, gamma, w)


def test_two_step_targets_when_a_user_drops_the_state_mid_stream():
    """A user's loop that starts afresh without ``last=True`` (an epoch wraps; benchmarks/grid/char_lm.py
    does this): the dropped cut regresses on zero and does not wait, the cut before it completes
    its two-step target with a zero future, and the chunks after the reset go on as a new
    sequence. It used to raise a TypeError (the dropped cut waited with no delta)."""
    gamma, w, n, dropped = 0.5, 0.6, 6, 2  # the state after chunk 2 is dropped
    seen, injected, chunk = _users_loop("lstm", gamma, w, 3, n, drop_after=dropped)
    assert len(seen) == n - 1  # the cuts after chunks 0..n-2, in order

    def dot(g, e):
        return sum((a * b).sum() for a, b in zip(tg.as_tuple(g), tg.as_tuple(e)))

    for k, (cut, target) in enumerate(seen):
        if k == dropped:
            assert all(t.abs().max() == 0 for t in tg.as_tuple(target))
            continue
        c = k + 1  # the chunk after the cut
        start = tg.detach_requires_grad(cut)
        loss, end = chunk(c, start)
        if c == n - 1:
            total = loss
        else:
            later = 0.0
            if c != dropped:  # the next cut's one-step target (zero after the dropped state)
                loss2, end2 = chunk(c + 1, end)
                later = loss2 if c + 1 == n - 1 else loss2 + gamma * dot(injected[c + 1], end2)
            total = loss + (1 - w) * gamma * dot(injected[c], end) + w * later
        for got, want in zip(tg.as_tuple(target), torch.autograd.grad(total, list(tg.as_tuple(start)))):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_two_step_targets_need_the_chunk_at_hand():
    rnn = _rnn("lstm")
    synth = Synthesizer.for_rnn(rnn, lookahead=2)
    x = torch.randn(2, 4, 3)
    out, h = rnn(x)
    with pytest.raises(ValueError, match=r"lookahead=2\) runs each chunk again.*model=model, inputs=x"):
        synth.backward_synthetic(h, out.sum())
    with pytest.raises(ValueError, match="model must be the nn.Module"):
        synth.backward_synthetic(h, out.sum(), model=lambda a, b: (a, b), inputs=x)
    with pytest.raises(ValueError, match="lookahead=3"):
        Synthesizer(size=4, lookahead=3)
    with pytest.raises(ValueError, match="lookahead_weight"):
        Synthesizer(size=4, lookahead=2, lookahead_weight=1.5)
