"""dni_dist.diagnose: predictable where the answer is known to be yes (delayed recall), not where it is
known to be no (targets that are i.i.d. noise), and the regression it rests on."""
import pytest
import torch

from dni_dist import Spec
from dni_dist.config import Config
from dni_dist.diagnose import THRESHOLD, collect, diagnose, main, r2, ridge_r2
from dni_dist.model import SeqModel
from dni_dist.tasks.specs import bce_loss, task_spec


def recall_spec(seed=0):
    return task_spec(Config(task="recall", delay=3, truncation=4, chunks=6, hidden=32, batch=16, seed=seed))


def noise_spec(seed=0):
    """Inputs and targets independent random bits: nothing about the future loss is knowable at a cut."""
    def batch(i):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        x = torch.randint(0, 2, (16, 24, 1), generator=g).float()
        y = torch.randint(0, 2, (16, 24, 1), generator=g).float()
        return x, y, torch.ones(16, 24)
    return Spec(model=lambda: SeqModel(1, 32, 1), batch=batch, loss=bce_loss, name="noise")


def test_delayed_recall_is_predictable_from_the_state():
    d = diagnose(recall_spec(), truncation=4, steps=20, cuts=1500, mlp=False)
    assert d.r2["state -> next"] > 5 * THRESHOLD, d.r2
    assert d.helps and d.verdict.startswith("DNI can help")


def test_iid_noise_targets_are_not_predictable():
    d = diagnose(noise_spec(), truncation=4, steps=20, cuts=1500, mlp=False)
    assert d.r2["state -> next"] < THRESHOLD, d.r2
    assert d.r2["state + next inputs -> next"] < THRESHOLD, d.r2
    assert not d.helps and d.verdict.startswith("expect no gain")


def test_ridge_r2_recovers_a_linear_map_and_scores_noise_near_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 10, generator=g)
    w = torch.randn(10, 3, generator=g)
    y = x @ w + 0.1 * torch.randn(2000, 3, generator=g)
    assert ridge_r2(x[:1600], y[:1600], x[1600:], y[1600:]) > 0.98
    noise = torch.randn(2000, 3, generator=g)
    assert abs(ridge_r2(x[:1600], noise[:1600], x[1600:], noise[1600:])) < 0.02
    assert r2(y, y, y.mean(0)) == 1.0


def test_collected_target_is_the_next_chunks_loss_gradient():
    spec = recall_spec()
    torch.manual_seed(0)
    model = spec.model()
    data = collect(spec, model, 0, 10, 4, {})
    x, y, mask = spec.batch(0)
    # recompute the first cut (before chunk 1) by hand
    with torch.no_grad():
        _, s = model(x[:, :4], None)
    s = tuple(t.detach().requires_grad_(True) for t in s)
    out, _ = model(x[:, 4:8], s)
    grad = torch.autograd.grad(bce_loss(out, y[:, 4:8], mask[:, 4:8]), s)
    want = torch.cat([grad[0][0], grad[1][0]], 1)
    torch.testing.assert_close(data["next"][:16], want)
    torch.testing.assert_close(data["state"][:16], torch.cat([s[0][0], s[1][0]], 1).detach())
    # all later losses: on the last cut the two targets agree, before it they differ
    n = 16
    torch.testing.assert_close(data["next"][-n:], data["future"][-n:])
    assert not torch.allclose(data["next"][:n], data["future"][:n])


def test_bad_truncation_is_one_clear_error():
    with pytest.raises(ValueError, match="not a multiple of truncation 5"):
        diagnose(recall_spec(), truncation=5, steps=1, cuts=100)
    with pytest.raises(ValueError, match="truncation"):
        diagnose(recall_spec(), truncation=0)


def test_command_line_on_a_builtin_task(capsys):
    d = main(["--task", "recall", "--hidden", "16", "--chunks", "4", "--batch", "8", "--steps", "3", "--cuts", "200",
              "--no-mlp"])
    out = capsys.readouterr().out
    assert "| state |" in out and "verdict" in out
    assert isinstance(d.helps, bool)


def test_a_feature_unseen_in_the_fitted_rows_does_not_blow_up_the_held_out_score():
    # a character never read in the fitted rows but read in held-out ones (found on Penn Treebank: R^2 -5e9)
    from dni_dist.diagnose import input_features, mlp_r2
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 4, (1200, 2), generator=g)
    ids[1000:1010, 0] = 4
    x = input_features(ids, vocab=5)
    y = x @ torch.randn(10, 3, generator=g, dtype=torch.float64) + 0.1 * torch.randn(1200, 3, generator=g)
    assert mlp_r2(x[:1000], y[:1000], x[1000:], y[1000:], epochs=5) > 0.5
    assert ridge_r2(x[:1000], y[:1000], x[1000:], y[1000:]) > 0.5
