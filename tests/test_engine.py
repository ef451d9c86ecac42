"""The engine: schedules as data, K=1 equals hand-written loops, debug == torchrun == Ray."""
import dataclasses
import json
import os

import pytest
import torch

import dni_dist
from dni_dist.checkpoint import latest
from dni_dist.config import Config
from dni_dist.engine.schedule import Schedule
from dni_dist.fit import resolve_spec
from dni_dist.runners import debug

import user_spec
from conftest import NOW, SMALL, USER, run_debug, run_spawned, seed_api_losses, synth_opts  # noqa: F401





# ------------------------------------------------------------------ schedules as data
@pytest.mark.parametrize("chunks,workers,batches", [(4, 1, 3), (4, 2, 3), (6, 3, 2), (8, 4, 5), (2, 2, 1)])
@pytest.mark.parametrize("lookahead", [1, 2])
def test_schedule_is_consistent(chunks, workers, batches, lookahead):
    s = Schedule(chunks, workers, batches, lookahead=lookahead)
    s.check()  # with lookahead=2 also: every target sent back is received, within the segment
    assert s.ticks == (batches + workers - 1) * chunks // workers + (lookahead == 2)  # + one idle tick
    for g in (1, 2):
        Schedule(chunks, workers, batches, stream_groups=g, lookahead=lookahead).check()
    busy = [sum(s.action(w, t) is not None for w in range(workers)) for t in range(s.ticks)]
    # steady state: every worker computes every tick
    assert max(busy) == workers or batches < workers


@pytest.mark.parametrize("workers,groups", [(2, 2), (2, 3), (4, 4), (4, 2), (4, 1), (2, 1), (1, 1)])
def test_stream_schedule_waits_only_when_groups_are_fewer_than_workers(workers, groups):
    s = Schedule(8, workers, 12, stream_groups=groups)
    s.check()  # a batch never starts before the batch it continues has left the last worker
    free = Schedule(8, workers, 12)
    if groups >= workers:
        assert s.ticks == free.ticks  # the hand-off has slack: no stall
    else:
        assert s.ticks > free.ticks
        per_batch = (s.starts[-1] - s.starts[groups]) / (len(s.starts) - 1 - groups)
        assert per_batch == pytest.approx(s.block * workers / groups, rel=0.2)  # runs at G/K speed


def test_schedule_table_prints_actions():
    table = Schedule(4, 2, 2).table()
    assert table.splitlines()[1].split()[2:5] == ["-", "-", "1B0C2"]


def test_schedule_rejects_bad_split():
    with pytest.raises(ValueError, match=r"chunks per sequence \(5\) must be a positive multiple of workers \(2\)"):
        Schedule(5, 2, 1)


# ------------------------------------------------------------------ K=1 equals hand-written loops
@pytest.mark.parametrize("mode,options", [("dni", {}), ("tbptt", {}), ("dni", {"lookahead": 2}),
                                          ("dni", {"train_every": 2}), ("dni", {"orthogonal": True}),
                                          ("dni", {"shut_train_every": 3, "factor": 0.0})])
def test_one_worker_equals_the_seed_api_loop(mode, options, tmp_path):
    """lookahead=2: the engine completes a cut's two-step target in the next chunk's tick, the
    seed API when the next cut resolves; the same targets before every injection, the same bits.
    train_every=2: both train the same cuts (counted over the run, 3 a batch here)."""
    cfg = Config(mode=mode, workers=1, checkpoint_dir=str(tmp_path), checkpoint_every=SMALL["steps"],
                 **{**SMALL, "synth_options": synth_opts(**options)})
    got = run_debug(cfg)["losses"]
    want, model, synth = seed_api_losses(cfg, {**NOW, **options} if mode == "dni" else None)
    assert got == want  # bitwise
    _, state = latest(str(tmp_path))
    for k, v in model.state_dict().items():
        assert torch.equal(state["worker"]["model"][k], v), k
    for k, v in (synth.state_dict() if synth is not None else {}).items():  # it learned on the same targets
        assert torch.equal(state["worker"]["synth"][k], v), k
    if synth is not None:
        cuts = cfg.steps * (cfg.chunks - 1)  # 15: with train_every=2 cuts 0, 2, ..., 14 are trained
        assert synth.stats.targets == -(-cuts // options.get("train_every", options.get("shut_train_every", 1)))


@pytest.mark.parametrize("spec_name", ["spec", "stream_spec"])
def test_one_worker_tbptt_equals_a_hand_written_stateful_loop(spec_name):
    """A user's GRU + SGD spec; with streams (G=2) batch i starts where batch i-2 ended."""
    spec = getattr(user_spec, spec_name)
    cfg = Config(mode="tbptt", workers=1, **USER)
    model = dni_dist.fit(spec, cfg).model
    torch.manual_seed(cfg.seed)
    ref = spec.model()
    opt = spec.optimizer(list(ref.parameters()))
    ends = {}
    for b in range(cfg.steps):
        x, y = spec.batch(b)
        state = ends.pop(b - spec.stream_groups, None) if spec.stream_groups else None
        for c in range(cfg.chunks):
            sl = slice(c * cfg.truncation, (c + 1) * cfg.truncation)
            out, state = ref(x[:, sl], None if state is None else state.detach())
            loss = spec.loss(out, y[:, sl], None)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ends[b] = state.detach()
    for (k, v), w in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)
    if spec.stream_groups:  # the streams really carried: a loop that restarts every batch differs
        plain = dni_dist.fit(user_spec.spec, cfg).model
        assert not all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))


def test_fit_returns_the_trained_model_and_save_round_trips(tmp_path):
    path = tmp_path / "model.pt"
    result = dni_dist.fit(user_spec.spec, Config(workers=2, save=str(path), **USER))
    assert isinstance(result.model, user_spec.Regressor)
    saved = torch.load(path, weights_only=True)
    for k, v in result.model.state_dict().items():
        assert torch.equal(saved[k], v), k
    untrained = user_spec.build()
    assert any(not torch.equal(saved[k], v) for k, v in untrained.state_dict().items())
    assert result.metrics["evals"][-1]["batch"] == USER["steps"]
    x, y = user_spec.get_batch(10_000)
    with torch.no_grad():
        mse = float(user_spec.loss_fn(result.model(x, None)[0], y, None))
    assert result.metrics["evals"][-1]["mse"] == pytest.approx(mse, rel=1e-6)


def test_metrics_count_the_extra_backward_pass():
    """``synth.jtg_passes`` counts the discounted targets' J^T g passes, the work a shut gate
    saves (benchmarks/scaling.py reports it): some with the default discount, none with
    discount 1, out of the same boundaries (no warm-up: the gate may open within these 12 batches)."""
    default = run_debug(Config(workers=2, **{**SMALL, "steps": 12}))["synth"]
    undiscounted = run_debug(Config(workers=2, discount=1.0, **{**SMALL, "steps": 12}))["synth"]
    assert default["targets"] == undiscounted["targets"] > 0
    assert 0 < default["jtg_passes"] <= default["targets"]
    assert undiscounted["jtg_passes"] == 0
    sparse = run_debug(Config(workers=2, **{**SMALL, "steps": 12, "synth_options": synth_opts(train_every=3)}))["synth"]
    assert sparse["targets"] == 12 * (SMALL["chunks"] - 1) // 3  # 36 cuts, one in 3 trained
    assert 0 < sparse["jtg_passes"] <= sparse["targets"]


# ------------------------------------------------------------------ distributed == debug
def _same_weights(a: dict, b: dict, exact=True):
    for k, v in a.items():
        if exact:
            assert torch.equal(v, b[k]), k
        else:
            torch.testing.assert_close(b[k], v, rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode,sync,reduce,options", [("dni", "exact", "auto", {}), ("tbptt", "exact", "auto", {}),
                                                      ("dni", "overlap", "auto", {}), ("dni", "exact", "backend", {}),
                                                      ("dni", "exact", "auto", {"train_every": 2})])
@pytest.mark.slow
def test_torch_distributed_matches_debug_bitwise(mode, sync, reduce, options, tmp_path):
    """K=2: shared-memory sums (auto, on one host) and gloo's all-reduce add two terms, the same bits
    (and with train_every=2 both train the same cuts)."""
    cfg = Config(mode=mode, sync=sync, workers=2, reduce=reduce, **{**SMALL, "synth_options": synth_opts(**options)})
    model, ref = debug.run(cfg, resolve_spec(cfg))
    got = run_spawned(dataclasses.replace(cfg, backend="torch"), tmp_path)
    assert got[0]["losses"] == got[1]["losses"] == ref["losses"]
    _same_weights(model.state_dict(), got[0]["model"])
    _same_weights(model.state_dict(), got[1]["model"])


@pytest.mark.timeout(240)
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two cores")
@pytest.mark.slow
def test_pin_cores_pins_every_thread_of_each_worker_to_its_own_core(tmp_path):
    """--pin-cores: each worker process, gloo's threads included (they exist before the pinning),
    runs on one core of its own; the math is untouched (the same bits as debug mode)."""
    cfg = Config(workers=2, pin_cores=True, **SMALL)
    model, ref = debug.run(cfg, resolve_spec(cfg))
    got = run_spawned(dataclasses.replace(cfg, backend="torch"), tmp_path)
    cores = sorted(os.sched_getaffinity(0))
    for rank, g in enumerate(got):
        assert g["affinity"] and all(a == [cores[rank]] for a in g["affinity"]), (rank, g["affinity"])
        assert g["losses"] == ref["losses"]
        _same_weights(model.state_dict(), g["model"])
    with pytest.raises(ValueError, match="--pin-cores pins torchrun or Ray worker processes"):
        dni_dist.fit(resolve_spec(cfg), cfg)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("chunks,sync,spec_name", [(4, "exact", None), (2, "overlap", None), (2, "exact", "stream_spec")])
def test_two_step_targets_torchrun_matches_debug(chunks, sync, spec_name, tmp_path):
    """lookahead=2, K=2: a cut whose next chunk runs on the next worker gets that cut's target
    back in a message (4 chunks: one such cut per sequence; 2 chunks: the last lands in the
    segment's idle tick; with a user's streams, 2 chunks, worker 1 sends a carry and a target
    back in one tick, and they must be received in that order)."""
    spec = getattr(user_spec, spec_name) if spec_name else None
    base = {**USER, "steps": 6, "chunks": chunks, "truncation": USER["chunks"] * USER["truncation"] // chunks} \
        if spec_name else {**SMALL, "chunks": chunks}
    cfg = Config(workers=2, sync=sync, **{**base, "synth_options": synth_opts(lookahead=2)})
    model, ref = debug.run(cfg, spec or resolve_spec(cfg))
    got = run_spawned(dataclasses.replace(cfg, backend="torch"), tmp_path, spec)
    assert got[0]["losses"] == got[1]["losses"] == ref["losses"]
    _same_weights(model.state_dict(), got[0]["model"])
    _same_weights(model.state_dict(), got[1]["model"])


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("spec_name,mode", [("spec", "dni"), ("spec", "tbptt"), ("stream_spec", "dni")])
def test_user_spec_torchrun_matches_debug(spec_name, mode, tmp_path):
    """A model, data, loss and optimizer from a user's module (GRU + SGD), K=2; with streams too."""
    spec = getattr(user_spec, spec_name)
    cfg = Config(mode=mode, workers=2, **USER)
    model, ref = debug.run(cfg, spec)
    got = run_spawned(dataclasses.replace(cfg, backend="torch"), tmp_path, spec)
    torch.testing.assert_close(torch.tensor(got[0]["losses"]), torch.tensor(ref["losses"]), rtol=1e-6, atol=0)
    _same_weights(model.state_dict(), got[0]["model"], exact=False)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("reduce", ["shared-memory", "backend"])
def test_four_workers_match_debug(reduce, tmp_path):
    """K=4. Shared-memory sums add the workers' buffers in rank order, as debug mode does: the same
    bits. gloo's ring all-reduce may add in another order: equal to 1e-6 relative."""
    cfg = Config(workers=4, reduce=reduce, **{**SMALL, "steps": 3})
    model, ref = debug.run(cfg, resolve_spec(cfg))
    got = run_spawned(dataclasses.replace(cfg, backend="torch"), tmp_path)
    if reduce == "shared-memory":
        assert all(g["losses"] == ref["losses"] for g in got)
        for g in got:
            _same_weights(model.state_dict(), g["model"])
    else:
        torch.testing.assert_close(torch.tensor(got[0]["losses"]), torch.tensor(ref["losses"]), rtol=1e-6, atol=1e-7)
        _same_weights(model.state_dict(), got[0]["model"], exact=False)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_matches_debug_for_a_user_spec():
    pytest.importorskip("ray")
    for mode in ("dni", "tbptt"):
        cfg = Config(mode=mode, workers=2, **USER)
        model, ref = debug.run(cfg, user_spec.spec)
        got = dni_dist.fit(user_spec.spec, dataclasses.replace(cfg, backend="ray"))
        torch.testing.assert_close(torch.tensor(got.metrics["losses"]), torch.tensor(ref["losses"]), rtol=1e-6,
                                   atol=0)
        _same_weights(model.state_dict(), got.model.state_dict(), exact=False)


def test_overlap_applies_every_gradient_one_step_late():
    """Against a hand-written loop whose every update applies the previous chunk's gradient (a run
    that applied zeros, or the current gradient, would differ)."""
    spec = user_spec.stream_spec
    cfg = Config(mode="tbptt", workers=1, sync="overlap", **USER)
    model = dni_dist.fit(spec, cfg).model
    torch.manual_seed(cfg.seed)
    ref = spec.model()
    params = list(ref.parameters())
    opt = spec.optimizer(params)
    ends, pending = {}, None
    for b in range(cfg.steps):
        x, y = spec.batch(b)
        state = ends.pop(b - spec.stream_groups, None)
        for c in range(cfg.chunks):
            sl = slice(c * cfg.truncation, (c + 1) * cfg.truncation)
            out, state = ref(x[:, sl], None if state is None else state.detach())
            grads = torch.autograd.grad(spec.loss(out, y[:, sl], None), params)
            if pending is not None:
                for p, g in zip(params, pending):
                    p.grad = g
                opt.step()
            pending = grads
        ends[b] = state.detach()
    for p, g in zip(params, pending):
        p.grad = g
    opt.step()
    for (k, v), w in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)


def test_entry_point_writes_json_and_csv(tmp_path):
    from dni_dist.train import main
    args = ["--workers", "2", "--chunks", "4", "--steps", "3", "--batch", "4", "--hidden", "8", "--no-progress",
            "--metrics-json", str(tmp_path / "m.json"), "--metrics-csv", str(tmp_path / "m.csv")]
    assert main(args) == 0
    m = json.load(open(tmp_path / "m.json"))
    assert {"losses", "tokens_per_s", "peak_rss_mb", "config", "startup_s", "evals"} <= set(m)
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0] == "step,batch,loss,tokens_per_s,skill,gate" and len(rows) == len(m["losses"]) + 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_fails_fast_when_the_actors_cannot_import_the_spec():
    pytest.importorskip("ray")
    from dni_dist.runners import ray_actors
    cfg = Config(workers=2, backend="ray", spec="no_such_module_anywhere:spec", **USER)
    with pytest.raises(ray_actors.SpecUnavailable, match="no_such_module_anywhere"):
        ray_actors.run(cfg)  # fails at once; the test's timeout catches a hang


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_run_longer_than_four_timeouts_completes():
    """The supervisor does not bound a healthy run: 60 batches of a 0.2 s data source with
    --timeout-s 2 last over 12 s, longer than 4 x 2 s (the old supervisor's limit)."""
    pytest.importorskip("ray")
    cfg = Config(workers=2, backend="ray", timeout_s=2.0, **{**USER, "steps": 60})
    got = dni_dist.fit(user_spec.slow_spec, cfg)
    assert got.metrics["wall_s"] > 4 * cfg.timeout_s
    assert len(got.metrics["losses"]) == (60 + 1) * 2  # (batches + K - 1) * block ticks


def test_the_finite_check_of_the_summed_gradient():
    """One reduction decides the common case; a sum that overflows still counts as finite."""
    from dni_dist import targets as tg
    from dni_dist.engine.worker import _finite
    assert _finite(torch.ones(1000))
    assert _finite(torch.full((4,), 3e38))  # the sum overflows to inf, every element is finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        g = torch.ones(1000)
        g[517] = bad
        assert not _finite(g)
        assert not tg.finite(torch.full((3,), -3e38), g) and tg.finite(torch.full((3,), -3e38), torch.ones(2))


def test_default_adam_falls_back_where_torch_refuses_fused(monkeypatch):
    from dni_dist import optim
    real = torch.optim.Adam

    def old_torch_adam(params, lr, fused=None):  # torch < 2.4 on CPU: no fused kernel
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be CUDA tensors")
        return real(params, lr=lr)

    monkeypatch.setattr(optim.torch.optim, "Adam", old_torch_adam)
    p = torch.nn.Parameter(torch.ones(3))
    opt = optim.adam([p], 0.1)
    assert isinstance(opt, real) and not opt.defaults["fused"]
    monkeypatch.setattr(optim.torch.optim, "Adam", real)
    assert optim.adam([p], 0.1).defaults["fused"]
