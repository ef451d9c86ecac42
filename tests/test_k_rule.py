"""The K rule: K is parallelism, not a hyper-parameter (issue 30, goal 1).

Every optimizer step, the model's and the synthesizer's, sees the mean over the chunks its tick
trained of each chunk's gradient (at K=1: one step per chunk with that chunk's gradient). A spec
that trains at K=1 then trains at K=2 and K=4 with the same optimizer settings.
"""
import pytest
import torch
from torch import nn

import dni_dist
from dni_dist.config import Config
from dni_dist.engine.loop import step_rule

T, CHUNKS, B = 4, 4, 16


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(1, 16, batch_first=True)
        self.out = nn.Linear(16, 1)

    def forward(self, x, state):
        h, state = self.rnn(x, state)
        return self.out(h), state


def batch(i):
    """y_t = x_t - 0.5 x_{t-1}: one step of memory (the target's variance is 1.25)."""
    g = torch.Generator().manual_seed(7 + i)
    x = torch.randn(B, CHUNKS * T, 1, generator=g)
    y = x - 0.5 * torch.roll(x, 1, dims=1)
    y[:, 0] = x[:, 0]
    return x, y


def mse(out, y, mask):
    return ((out - y) ** 2).mean()


def sgd(params):  # the user's optimizer, the same at every K: SGD, momentum 0.9
    return torch.optim.SGD(params, lr=0.2, momentum=0.9)


def held_out(model):
    x, y = batch(10 ** 6)
    return {"mse": float(mse(model(x, None)[0], y, None))}


SPEC = dni_dist.Spec(model=Net, batch=batch, loss=mse, optimizer=sgd, evaluate=held_out,
                     synthesizer={"gate_warmup": 0})
TOLERANCE = 0.02  # held-out MSE above K=1's, at equal data: 1.6% of the target's variance


@pytest.mark.timeout(120)
def test_a_spec_that_trains_at_one_worker_trains_at_two_and_four():
    """60 batches at K=1 (240 steps), K=2 (122 steps) and K=4 (63 steps), the same SGD.
    Summing the chunks' gradients (the rule before) multiplied the step by K: at K=4 this spec
    diverged (MSE inf after 23 steps). Measured with the mean (2-core box): K=1 0.0009, K=2 0.0021,
    K=4 0.0091."""
    got = {}
    for k in (1, 2, 4):
        cfg = Config(workers=k, steps=60, chunks=CHUNKS, truncation=T, progress=False, eval_every=0)
        m = dni_dist.fit(SPEC, cfg).metrics
        assert len(m["losses"]) == (60 + k - 1) * CHUNKS // k  # one optimizer step per tick
        got[k] = m["evals"][-1]["mse"]
    assert got[1] < 0.01, got  # it trains at K=1 (an untrained model: ~1.25)
    for k in (2, 4):
        assert got[k] <= got[1] + TOLERANCE, got


def test_two_workers_step_on_the_mean_of_the_chunks_a_tick_trains():
    """TBPTT, K=2, two chunks, two batches, plain SGD: tick 0 steps on chunk 0 of batch 0 alone,
    tick 1 on the mean of batch 1's chunk 0 and batch 0's chunk 1 (both at the weights after tick
    0), tick 2 on batch 1's chunk 1: a hand-written loop of the rule, to float rounding."""
    lr, chunks, t = 0.5, 2, 8

    def plain_sgd(params):
        return torch.optim.SGD(params, lr=lr)

    spec = dni_dist.Spec(model=Net, batch=lambda i: tuple(v[:, :chunks * t] for v in batch(i)), loss=mse,
                         optimizer=plain_sgd)
    cfg = Config(mode="tbptt", workers=2, steps=2, chunks=chunks, truncation=t, progress=False)
    model = dni_dist.fit(spec, cfg).model
    torch.manual_seed(cfg.seed)
    ref = Net()
    params = list(ref.parameters())

    def grad(b, c, state):
        x, y = (v[:, c * t:(c + 1) * t] for v in batch(b))
        out, end = ref(x, state)
        return torch.autograd.grad(mse(out, y, None), params), end.detach()

    def step(grads):
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g

    g00, h0 = grad(0, 0, None)
    step(g00)                                   # tick 0: worker 0 runs batch 0 chunk 0
    g10, h1 = grad(1, 0, None)                  # tick 1: worker 0 runs batch 1 chunk 0,
    g01, _ = grad(0, 1, h0)                     # worker 1 batch 0 chunk 1 from tick 0's state
    step([(a + b) / 2 for a, b in zip(g10, g01)])
    g11, _ = grad(1, 1, h1)                     # tick 2: worker 1 runs batch 1 chunk 1
    step(g11)
    for (k, v), w in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=k)


def test_the_synthesizer_steps_on_the_mean_over_the_chunks_that_trained_it(monkeypatch):
    """The synthesizer's part of the summed buffer is divided by how many chunks regressed it
    (the count travels in the buffer); its evidence is handed over summed (finish_update divides
    by the number of boundaries itself)."""
    from dni_dist.engine.grad_buffer import EVIDENCE
    from dni_dist.engine.worker import Worker
    from dni_dist.run_plan import worker_settings
    cfg = Config(workers=2, steps=1, chunks=CHUNKS, truncation=T, progress=False)
    w = Worker(SPEC, worker_settings(cfg, SPEC), 0)
    n = w.grads.n_synth
    seen = {}
    monkeypatch.setattr(w.synth, "finish_update",
                        lambda ev: seen.update(grad=torch.cat([p.grad.reshape(-1) for p in w.sparams]).clone(),
                                               ev=ev.clone()))
    total = torch.zeros(n + 1 + EVIDENCE)
    total[:n] = 3.0
    total[n] = 2.0  # two chunks trained it this tick
    total[-EVIDENCE:] = torch.tensor([4.0, 1.0, 2.0, 3.0, 4.0])
    w.apply_synth(total)
    assert torch.equal(seen["grad"], torch.full((n,), 1.5))
    assert seen["ev"].tolist() == [4.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("workers,parallel,text", [
    (1, "pipeline", "K=1: one optimizer step per chunk, on that chunk's gradient"),
    (2, "pipeline", "K=2: one optimizer step per tick, mean of 2 chunks"),
    (4, "data", "K=4 data-parallel: one optimizer step per chunk, mean of 4 replicas (each 1/4 of the batch)")])
def test_the_rule_is_printed_at_start(workers, parallel, text):
    assert step_rule(workers, parallel).startswith(text)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_data_parallel_replicas_step_on_the_mean_as_one_worker_on_the_whole_batch(tmp_path):
    """parallel='data', K=2 gloo processes, each on half of every batch of a user's GRU + SGD spec
    (TBPTT): the mean of the two replicas' gradients is the whole batch's (the loss is a mean over
    rows), so the run equals one worker on the whole batch, to float rounding; a sum would double
    every SGD step. (With DNI the synthesizer's batch statistics, its centring and its gate, are
    taken over each replica's rows, so DNI runs are not comparable this way.)"""
    import dataclasses

    import user_spec
    from dni_dist.runners import debug
    from conftest import USER, run_spawned
    cfg = Config(mode="tbptt", workers=1, **USER)
    model, ref = debug.run(cfg, user_spec.spec)
    got = run_spawned(dataclasses.replace(cfg, workers=2, parallel="data", backend="torch"), tmp_path, user_spec.spec)
    torch.testing.assert_close(torch.tensor(got[0]["losses"]), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(got[0]["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
