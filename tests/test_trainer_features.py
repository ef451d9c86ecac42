"""Trainer features (issue 30 goal 7): learning-rate schedule, bf16 autocast, gradient
accumulation, callbacks, keep-best and early stopping, MLflow logging; each in --help."""
import json
import math
import sys

import pytest

from dni_dist.runners.common import EndOfRunError
import torch
from torch import nn

import dni_dist
from dni_dist.cli import parser
from dni_dist.config import Config, ConfigError
from dni_dist.fit import ConfigWarning, fit

import user_spec as us

torch.set_num_threads(1)
QUIET = {"progress": False, "seed": 0}


class RecordingSGD(torch.optim.SGD):
    """SGD that records the learning rate of every step it takes."""
    lrs: list = []

    def step(self, closure=None):
        type(self).lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


def recording_sgd(params):
    return RecordingSGD(params, lr=0.05)


def user(**kw):
    base = dict(model=us.build, batch=us.get_batch, loss=us.loss_fn, optimizer=recording_sgd, evaluate=us.evaluate,
                truncation=us.T, chunks=us.CHUNKS)
    base.update(kw)
    return dni_dist.Spec(**base)


# ---------------------------------------------------------------- 1. learning-rate schedule
def cosine_by_hand(s, total, warmup):
    if s < warmup:
        return s / warmup
    return 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))


def test_cosine_schedule_with_warmup_follows_the_formula():
    RecordingSGD.lrs = []
    fit(user(), mode="tbptt", steps=3, lr_schedule="cosine", warmup_steps=3, **QUIET)
    total = 3 * us.CHUNKS  # K=1: one optimizer step per chunk
    assert RecordingSGD.lrs == pytest.approx([0.05 * cosine_by_hand(s, total, 3) for s in range(total)])


def test_cosine_counts_the_pipelines_optimizer_steps_at_k2():
    RecordingSGD.lrs = []
    fit(user(), mode="tbptt", steps=3, workers=2, lr_schedule="cosine", **QUIET)
    # K=2, 4 chunks: batch i starts at tick 2i on worker 0 and leaves worker 1 at tick 2i+3 -> 8 ticks, a step each
    assert len(RecordingSGD.lrs) == 2 * 8  # debug mode: both replicas step in this process, in turn
    assert RecordingSGD.lrs[::2] == pytest.approx([0.05 * cosine_by_hand(s, 8, 0) for s in range(8)])
    assert RecordingSGD.lrs[1::2] == RecordingSGD.lrs[::2]


def test_a_spec_schedule_and_a_resumed_run_continue_the_schedule(tmp_path):
    spec = user(lr_schedule=lambda s: 0.9 ** s)
    RecordingSGD.lrs = []
    whole = fit(spec, mode="dni", steps=4, **QUIET)
    full = list(RecordingSGD.lrs)
    assert full == pytest.approx([0.05 * 0.9 ** s for s in range(4 * us.CHUNKS)])
    ck = dict(checkpoint_dir=str(tmp_path), checkpoint_every=2, mode="dni", **QUIET)
    fit(spec, steps=2, **ck)
    RecordingSGD.lrs = []
    resumed = fit(spec, steps=4, resume=True, **ck)
    assert RecordingSGD.lrs == pytest.approx(full[2 * us.CHUNKS:])
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_a_spec_schedule_wins_over_the_option_with_a_warning():
    RecordingSGD.lrs = []
    with pytest.warns(ConfigWarning, match="--lr-schedule cosine is ignored: the spec brings its own lr_schedule"):
        fit(user(lr_schedule=lambda s: 0.5), mode="tbptt", steps=1, lr_schedule="cosine", **QUIET)
    assert RecordingSGD.lrs == pytest.approx([0.025] * us.CHUNKS)


def test_cosine_schedule_resumes_after_a_failure(tmp_path):
    opts = dict(mode="tbptt", steps=4, lr_schedule="cosine", warmup_steps=2, checkpoint_dir=str(tmp_path),
                checkpoint_every=2, **QUIET)
    RecordingSGD.lrs = []
    fit(user(), **{**opts, "checkpoint_dir": str(tmp_path / "whole")})
    full = list(RecordingSGD.lrs)
    with pytest.raises(Exception):
        fit(user(), fail_at=3, **opts)
    RecordingSGD.lrs = []
    fit(user(), resume=True, **opts)
    assert RecordingSGD.lrs == pytest.approx(full[2 * us.CHUNKS:])


# ---------------------------------------------------------------- 2. precision
def test_bf16_autocast_trains_and_runs_the_forward_in_bf16():
    seen = []

    def build():
        m = us.build()
        m.out.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
        return m

    r = fit(user(model=build, optimizer=us.sgd, synthesizer={"lr": 1e-2, "gate_warmup": 0}), mode="dni", steps=30,
            precision="bf16", **QUIET)
    losses = r.metrics["losses"]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
    assert torch.bfloat16 in seen  # the training forward (evaluate runs in fp32)
    assert all(p.dtype == torch.float32 for p in r.model.parameters())
    assert r.metrics["synth"]["updates"] > 0


def test_fp16_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="loss scaling"):
        Config(precision="fp16")


# ---------------------------------------------------------------- 3. gradient accumulation
class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x, state):
        out = self.lin(x)
        return out, out[:, -1]


def lin_batch(index):
    g = torch.Generator().manual_seed(index)
    return torch.randn(4, 6, 2, generator=g), torch.randn(4, 6, 1, generator=g)


def mse(out, y, mask):
    return ((out - y) ** 2).mean()


def test_grad_accum_steps_once_per_m_ticks_on_the_mean():
    RecordingSGD.lrs = []
    spec = dni_dist.Spec(model=Linear, batch=lin_batch, loss=mse, optimizer=recording_sgd, truncation=3, chunks=2)
    r = fit(spec, mode="tbptt", steps=2, grad_accum=2, **QUIET)  # 4 ticks, one chunk each
    assert len(RecordingSGD.lrs) == 2
    assert len(r.metrics["losses"]) == 4
    torch.manual_seed(0)
    ref = Linear()
    for b in range(2):  # by hand: the mean of two chunks' gradients at the same weights, then SGD
        x, y = lin_batch(b)
        grads = []
        for c in range(2):
            ref.zero_grad()
            mse(ref(x[:, 3 * c:3 * c + 3], None)[0], y[:, 3 * c:3 * c + 3], None).backward()
            grads.append([p.grad.clone() for p in ref.parameters()])
        with torch.no_grad():
            for p, g0, g1 in zip(ref.parameters(), *grads):
                p -= 0.05 * (g0 + g1) / 2
    for a, b in zip(r.model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_grad_accum_resumes_mid_accumulation(tmp_path):
    spec = dni_dist.Spec(model=Linear, batch=lin_batch, loss=mse, optimizer=recording_sgd, truncation=3, chunks=2)
    opts = dict(mode="tbptt", steps=3, grad_accum=3, checkpoint_every=1, **QUIET)  # 2 ticks a batch: cut mid-way
    whole = fit(spec, checkpoint_dir=str(tmp_path / "whole"), **opts)
    with pytest.raises(Exception):
        fit(spec, checkpoint_dir=str(tmp_path / "cut"), fail_at=2, **opts)
    resumed = fit(spec, checkpoint_dir=str(tmp_path / "cut"), resume=True, **opts)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- 4. callbacks
def test_callbacks_are_called_with_the_batch_index():
    ends, evals = [], []
    spec = user(on_batch_end=lambda i, m: ends.append((i, m["batches_done"], math.isfinite(m["loss"]))),
                on_eval=lambda i, m: evals.append((i, sorted(m))))
    fit(spec, mode="tbptt", steps=5, eval_every=2, **QUIET)
    assert ends == [(i, i + 1, True) for i in range(5)]
    assert evals == [(1, ["mse"]), (3, ["mse"]), (4, ["mse"])]  # after batches 2 and 4, and at the end


# ---------------------------------------------------------------- 5. keep-best and early stopping
def scripted(values):
    calls = []

    def evaluate(model):
        calls.append(1)
        return {"score": values[len(calls) - 1]}
    return evaluate


def test_keep_best_writes_the_best_model_atomically(tmp_path):
    kept = {}
    spec = user(evaluate=scripted([5.0, 4.0, 6.0, 3.0, 7.0, 8.0]),
                on_eval=lambda i, m: kept.setdefault(i, {k: v.clone() for k, v in r_model[0].state_dict().items()}))
    r_model = []
    orig = spec.model
    spec.model = lambda: r_model.append(orig()) or r_model[-1]
    save = tmp_path / "model.pt"
    fit(spec, mode="dni", steps=6, eval_every=1, keep_best="score", save=str(save), **QUIET)
    best = torch.load(tmp_path / "model.best.pt", weights_only=True)
    assert best["batch"] == 4 and best["value"] == 3.0 and "synth" in best
    for k, v in best["model"].items():
        assert torch.equal(v, kept[3][k])
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_keep_best_max_and_an_unknown_metric(tmp_path):
    path = tmp_path / "b.pt"
    fit(user(evaluate=scripted([1.0, 3.0, 2.0])), mode="tbptt", steps=3, eval_every=1, keep_best="max:score",
        best_path=str(path), **QUIET)
    assert torch.load(path, weights_only=True)["batch"] == 2
    # raised at the run's final evaluation: an end-of-run failure (everything else is written first)
    with pytest.raises(EndOfRunError, match="no metric 'acc'.*score"):
        fit(user(evaluate=scripted([1.0])), mode="tbptt", steps=1, keep_best="acc", best_path=str(path), **QUIET)
    with pytest.raises(ConfigError, match="--save PATH"):
        Config(keep_best="score")


def test_early_stop_ends_the_run_cleanly(tmp_path, capsys):
    spec = user(evaluate=scripted([5.0, 4.0, 6.0, 7.0] + [9.0] * 10))
    r = fit(spec, mode="tbptt", steps=10, eval_every=1, keep_best="score", early_stop=2,
            save=str(tmp_path / "m.pt"), **QUIET)
    assert r.metrics["batches"] == 4 and "early stop at batch 4" in r.metrics["stopped"]
    assert len(r.metrics["losses"]) == 4 * us.CHUNKS
    assert (tmp_path / "m.pt").exists() and (tmp_path / "m.best.pt").exists()
    assert "early stop at batch 4: score did not improve for 2 evaluations" in capsys.readouterr().err


def test_early_stop_from_the_command_line_exits_0(tmp_path, capsys):
    from dni_dist import train
    spec = user(evaluate=scripted([5.0, 6.0, 7.0] + [9.0] * 10))
    code = train.main(["--mode", "tbptt", "--steps", "10", "--eval-every", "1", "--keep-best", "score",
                       "--early-stop", "2", "--best-path", str(tmp_path / "b.pt"), "--no-progress",
                       "--metrics-json", str(tmp_path / "m.json")], spec=spec)
    assert code in (0, None)
    assert "early stop at batch 3" in capsys.readouterr().err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["batches"] == 3 and m["stopped"].startswith("early stop at batch 3")


# ---------------------------------------------------------------- 6. MLflow
def test_mlflow_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match=r"pip install 'dni_dist\[mlflow\]'"):
        fit(user(), mode="tbptt", steps=1, mlflow=str(tmp_path), **QUIET)


def test_mlflow_logs_params_and_metrics(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    fit(user(), mode="tbptt", steps=3, eval_every=1, mlflow=str(tmp_path / "runs"), **QUIET)
    client = mlflow.tracking.MlflowClient(tracking_uri="file:" + str(tmp_path / "runs"))
    exp = [e for e in client.search_experiments() if e.name != "Default"][0]
    run = client.search_runs([exp.experiment_id])[0]
    assert run.data.params["steps"] == "3" and run.data.params["mode"] == "tbptt"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_mse")] == [1, 2, 3]


# ---------------------------------------------------------------- --help
def test_every_trainer_option_is_in_help():
    text = parser().format_help()
    for flag in ("--lr-schedule", "--warmup-steps", "--precision", "--grad-accum", "--keep-best", "--best-path",
                 "--early-stop", "--mlflow"):
        assert flag in text
    training = text.split("training:")[1].split("parallelism:")[0]
    assert "--grad-accum" in training and "--precision" in training and "--lr-schedule" in training
