"""The seed API as the README writes it (issue 30, goal 4) and its public surface (issue 29, goal 2)."""
import pytest
import torch
from torch import nn

import dni_dist
from dni_dist import SynthOptions, Synthesizer


def _train(last: bool, sequences: int = 6, chunks: int = 3, T: int = 2):
    """The three lines in a TBPTT loop over independent sequences; ``last``: tell the final chunk."""
    torch.manual_seed(0)
    rnn, head = nn.GRU(3, 5, batch_first=True), nn.Linear(5, 1)
    opt = torch.optim.SGD([*rnn.parameters(), *head.parameters()], lr=0.1)
    synth = Synthesizer()
    gen = torch.Generator().manual_seed(1)
    for _ in range(sequences):
        x = torch.randn(4, chunks * T, 3, generator=gen)
        h = None
        for c in range(chunks):
            out, h = rnn(x[:, c * T:(c + 1) * T], h)
            loss = head(out).pow(2).mean()
            if last:
                h = synth.backward_synthetic(h, loss, last=c == chunks - 1)
            else:
                h = synth.backward_synthetic(h, loss)  # the README's line, as written
            opt.zero_grad()
            loss.backward()
            opt.step()
        synth.step()
    return rnn, synth


def test_the_three_lines_without_last_train_the_cuts_the_engine_trains():
    """step() ends the sequence: the state returned last, which nothing follows, is dropped (as
    the engine drops a sequence's end) instead of trained toward a zero target from nothing. With
    the gate shut (its warm-up) nothing is injected at the end either: the same bits as last=True."""
    rnn_a, a = _train(last=True)
    rnn_b, b = _train(last=False)
    assert b.stats.targets == a.stats.targets == 6 * 2 and b.stats.updates == a.stats.updates
    assert b.stats.zero_targets == 0 and b.stats.dropped_ends == 5  # the last one waits for a next call
    sa, sb = a.state_dict(), b.state_dict()
    for x, y in [*zip(sa.values(), sb.values()), *zip(rnn_a.parameters(), rnn_b.parameters())]:
        assert torch.equal(x, y)


@pytest.mark.parametrize("then", ["next chunk", "step"])
def test_backward_synthetic_after_loss_backward_on_the_first_chunk_is_an_error(then):
    synth = Synthesizer(4, is_lstm=False)
    rnn = nn.GRU(3, 4)
    out, h = rnn(torch.randn(2, 2, 3))
    loss = out.sum()
    loss.backward()  # too early: the synthetic gradient can no longer ride on it
    h = synth.backward_synthetic(h, loss)
    with pytest.raises(ValueError, match="was not back-propagated after that call"):
        if then == "step":
            synth.step()
        else:
            out, h = rnn(torch.randn(2, 2, 3), h)
            synth.backward_synthetic(h, out.sum())


def test_options_object_equals_keywords_and_misspellings_name_the_valid_ones():
    a = Synthesizer(4, is_lstm=False, options=SynthOptions(train_every=2, gate_warmup=7))
    b = Synthesizer(4, is_lstm=False, train_every=2, gate_warmup=7)
    assert a.options == b.options and a.train_every == 2 and b.gate_warmup == 7
    c = Synthesizer(4, is_lstm=False, options=SynthOptions(train_every=2), train_every=3)  # the keyword wins
    assert c.train_every == 3
    config_like = {"lr": 1e-2, "factor": 1.0, "discount": 0.5, "gate_warmup": 0, "lookahead": 2}
    assert Synthesizer(**config_like).lookahead == 2  # what the engine's Config passes, as a dict
    with pytest.raises(ValueError, match=r"unknown option 'gate_warmpu' \(did you mean 'gate_warmup'\?\); valid"):
        Synthesizer(gate_warmpu=3)
    for gone in ("aux", "allow_backwarding", "activation", "gate_significance", "gate_min_correlation"):
        with pytest.raises(ValueError, match="unknown option"):
            Synthesizer(**{gone: 1})
    with pytest.raises(ValueError, match="gate_check_every"):
        SynthOptions(gate_check_every=-1)
    assert "SynthOptions" in dni_dist.__all__


def test_a_checkpoint_saved_before_the_gate_clock_loads():
    """state_dict keys are those of the previous release plus ``gate_clock``; a state without it loads
    (the gate is read at the next injection)."""
    s = Synthesizer(4, is_lstm=False, num_layers=1)
    old = {k: v for k, v in s.state_dict().items() if k != "gate_clock"}
    assert set(old) == {"target_ms", "fit", "fit_count", "net.0.weight", "net.0.bias"}
    assert s.state_dict()["gate_clock"].shape == (3,)
    t = Synthesizer(4, is_lstm=False, num_layers=1)
    t.load_state_dict(old)
    t.tick()  # reads at once
    assert t.gate_open() is False and t.ticks() == 1


def test_a_shut_gate_trains_one_cut_in_k_after_its_warmup():
    """shut_train_every=3 with a gate that stays shut (factor 0): the warm-up's cuts are all trained,
    then those after chunks 0, 3, 6, ... of the run; nothing is predicted or injected while shut."""
    torch.manual_seed(0)
    rnn = nn.GRU(3, 4, batch_first=True)
    synth = Synthesizer.for_rnn(rnn, factor=0.0, gate_warmup=4, gate_check_every=1, shut_train_every=3)
    predicted, kept = [], []
    synth.synthetic_gradient = lambda s: predicted.append(1)
    keep = synth.keep_cut
    synth.keep_cut = lambda i: kept.append((i, keep(i))) or kept[-1][1]
    h = None
    for c in range(25):
        out, h = rnn(torch.randn(2, 2, 3), h)
        loss = out.pow(2).mean()
        h = synth.backward_synthetic(h, loss)
        loss.backward()
        synth.step()
    first_shut = next(k for k, (_, kept_it) in enumerate(kept) if not kept_it)
    assert 3 <= first_shut <= 6 and all(kept_it for _, kept_it in kept[:first_shut])  # the warm-up
    assert all(kept_it == (i % 3 == 0) for i, kept_it in kept[first_shut:])
    assert synth.stats.targets == sum(kept_it for _, kept_it in kept) and predicted == []
    with pytest.raises(ValueError, match="shut_train_every=2, lookahead=2"):
        Synthesizer(shut_train_every=2, lookahead=2)
