"""The alignment diagnostic against an independent autograd computation."""
import torch

from dni_dist import SeqModel, Synthesizer, alignment
from dni_dist import targets as tg
from dni_dist.tasks import delayed_recall_batch


def test_alignment_matches_a_manual_future_gradient():
    torch.manual_seed(0)
    model = SeqModel(1, 6, 1)
    synth = Synthesizer.for_rnn(model.rnn, normalize=False)
    with torch.no_grad():
        synth.net[-1].weight.normal_()
        synth.net[-1].bias.normal_()
    x, y, m = delayed_recall_batch(5, 9, 2, torch.Generator().manual_seed(1))
    state = model.initial_state(5)
    got = alignment(model, synth, state, x, y, m, truncation=3)
    assert len(got) == 2
    # manual: boundary after chunk 0 -> true gradient of losses of chunks 1 and 2
    _, h1 = model.chunk_loss(x[:, :3], y[:, :3], m[:, :3], state)
    leaf = tg.detach_requires_grad(h1)
    l1, h2 = model.chunk_loss(x[:, 3:6], y[:, 3:6], m[:, 3:6], leaf)
    l2, _ = model.chunk_loss(x[:, 6:], y[:, 6:], m[:, 6:], h2)
    true = tg.flatten_state(torch.autograd.grad(l1 + l2, list(leaf)))
    pred = tg.flatten_state(synth(tg.detach(h1)))
    cos = torch.nn.functional.cosine_similarity(pred.flatten(), true.flatten(), dim=0)
    assert abs(got[0]["cosine"] - float(cos)) < 1e-5
    assert abs(got[0]["norm_ratio"] - float(pred.norm() / true.norm())) < 1e-4
    assert all(p.grad is None for p in model.parameters())  # parameter gradients untouched
