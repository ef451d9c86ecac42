"""Checkpointing never changes the trajectory (issue 30, goal 2).

A run with ``--checkpoint-every N`` computes exactly what a run without computes (the pipeline is
not drained at a checkpoint: what is in flight is saved), and a run killed after a checkpoint and
resumed from it equals both, bitwise.
"""
import dataclasses
import json

import pytest
import torch

from dni_dist.checkpoint import latest
from dni_dist.config import Config
from dni_dist.fit import resolve_spec
from dni_dist.runners import debug
from dni_dist.testing.faults import WorkerFailure

import user_spec

BASE = dict(steps=7, chunks=4, batch=4, hidden=8, progress=False, delay=3, truncation=3, synth_lr=1e-2)
USER = dict(steps=7, chunks=user_spec.CHUNKS, truncation=user_spec.T, progress=False)


def opts(**kw):
    return json.dumps({"gate_warmup": 0, **kw})


CASES = {  # name: (config fields, spec or None for the built-in task)
    "K1": (dict(BASE, workers=1, synth_options=opts()), None),
    "K2 exact": (dict(BASE, workers=2, synth_options=opts()), None),
    "K2 overlap": (dict(BASE, workers=2, sync="overlap", synth_options=opts()), None),
    "K2 two-step": (dict(BASE, workers=2, synth_options=opts(lookahead=2)), None),
    "K4 two-step": (dict(BASE, workers=4, synth_options=opts(lookahead=2)), None),
    "K2 streams two-step": (dict(USER, workers=2, synth_options=opts(lookahead=2)), "stream_spec"),
    "K2 tbptt streams": (dict(USER, workers=2, mode="tbptt"), "stream_spec"),
}


def _run(fields, spec_name, **extra):
    cfg = Config(**{**fields, **extra})
    spec = getattr(user_spec, spec_name) if spec_name else resolve_spec(cfg)
    model, m = debug.run(cfg, spec)
    return model, m


def _assert_same(a, b):
    (model_a, m_a), (model_b, m_b) = a, b
    assert m_a["losses"] == m_b["losses"]
    for k, v in model_a.state_dict().items():
        assert torch.equal(v, model_b.state_dict()[k]), k


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoints_do_not_change_the_run(case, tmp_path):
    """Every 2 batches of 7 (3 mid-run checkpoints, the pipeline full at each) and every batch."""
    fields, spec_name = CASES[case]
    plain = _run(fields, spec_name)
    for every in (2, 1):
        d = tmp_path / f"every{every}"
        got = _run(fields, spec_name, checkpoint_dir=str(d), checkpoint_every=every)
        _assert_same(plain, got)
    batch, state = latest(str(tmp_path / "every2"))
    assert batch == fields["steps"] and state["loop"] is None  # the last one: drained


@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(case, tmp_path):
    """Killed at batch 5 (after the checkpoint at batch 4, with batches in flight: the checkpoint
    holds them), resumed: the same losses and weights as a run never killed, bitwise."""
    fields, spec_name = CASES[case]
    plain = _run(fields, spec_name)
    d = str(tmp_path / "ck")
    kill = dict(checkpoint_dir=d, checkpoint_every=2, fail_at=5, fail_rank=fields["workers"] - 1, fail_mode="raise")
    with pytest.raises(WorkerFailure):
        _run(fields, spec_name, **kill)
    batch, state = latest(d)
    assert batch == 4 and state["loop"]["tick"] > 0  # a mid-run checkpoint
    resumed = _run(fields, spec_name, resume=True, **kill)
    _assert_same(plain, resumed)


def test_an_old_drained_checkpoint_still_resumes(tmp_path):
    """A checkpoint without in-flight state (the run's last one, or one from before) resumes as a
    run that starts there: a finished 3-batch run extended to 5 equals 3 + 2 drained batches."""
    fields = dict(BASE, workers=2, synth_options=opts())
    d = str(tmp_path / "ck")
    _run({**fields, "steps": 3}, None, checkpoint_dir=d, checkpoint_every=3)
    batch, state = latest(d)
    assert batch == 3 and state["loop"] is None
    _, m = _run({**fields, "steps": 5}, None, checkpoint_dir=d, checkpoint_every=3, resume=True)
    assert len(m["losses"]) == (3 + 1) * 2 + (2 + 1) * 2  # two schedules, each filling and draining


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_with_checkpoints_and_resumed_equals_debug_without(tmp_path):
    """K=2 gloo processes, checkpoints every 2 batches, killed at batch 5 and resumed: the same
    bits as debug mode without any checkpoint (the in-flight states travel between ranks)."""
    from conftest import run_spawned
    fields = dict(BASE, workers=2, synth_options=opts(lookahead=2))
    model, ref = _run(fields, None)
    d = str(tmp_path / "ck")
    cfg = Config(**fields, backend="torch", checkpoint_dir=d, checkpoint_every=2)
    got = run_spawned(cfg, tmp_path)
    assert got[0]["losses"] == got[1]["losses"] == ref["losses"]
    for k, v in model.state_dict().items():
        assert torch.equal(got[0]["model"][k], v), k
    batch, state = latest(d)
    assert batch == 7
    # resume from the mid-run checkpoint at batch 6 (written by that run) to the same end
    import os
    os.remove(os.path.join(d, "ckpt-00000007.pt"))
    got = run_spawned(dataclasses.replace(cfg, resume=True), tmp_path)
    assert got[0]["losses"] == ref["losses"]
    for k, v in model.state_dict().items():
        assert torch.equal(got[1]["model"][k], v), k


def test_resuming_with_fewer_steps_than_the_batches_in_flight_is_an_error(tmp_path):
    """K=4, one chunk a worker: at the checkpoint of batch 4, batches 4-6 are in flight (partly
    trained); a resumed run that would end before them says so instead of running something else."""
    fields = dict(BASE, workers=4, synth_options=opts())
    d = str(tmp_path / "ck")
    kill = dict(checkpoint_dir=d, checkpoint_every=4, fail_at=6, fail_rank=3, fail_mode="raise")
    with pytest.raises(WorkerFailure):
        _run(fields, None, **kill)
    assert latest(d)[1]["loop"]["started"] == 7
    with pytest.raises(ValueError, match=r"batches up to 6 in flight .* past --steps 5: resume with --steps >= 7"):
        _run({**fields, "steps": 5}, None, resume=True, **kill)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_data_parallel_streams_checkpoint_and_resume_like_a_run_without(tmp_path):
    """parallel='data', K=2, a user's streams (each replica continues its own rows): checkpoints
    save every rank's streams, so a run with them, and one resumed from a mid-run checkpoint, equal
    a run without (this combination was refused before)."""
    import os

    from conftest import run_spawned
    cfg = Config(**dict(USER, workers=2, mode="tbptt"), parallel="data", backend="torch")
    for sub in ("plain", "ck_run", "ck_run2"):
        (tmp_path / sub).mkdir()
    plain = run_spawned(cfg, tmp_path / "plain", user_spec.stream_spec)
    d = str(tmp_path / "ck")
    ck = dataclasses.replace(cfg, checkpoint_dir=d, checkpoint_every=2)
    got = run_spawned(ck, tmp_path / "ck_run", user_spec.stream_spec)
    assert got[0]["losses"] == plain[0]["losses"]
    os.remove(os.path.join(d, "ckpt-00000007.pt"))  # resume from the mid-run ckpt-6
    resumed = run_spawned(dataclasses.replace(ck, resume=True), tmp_path / "ck_run2", user_spec.stream_spec)
    assert resumed[0]["losses"] == plain[0]["losses"]
    for r in range(2):
        for k, v in plain[r]["model"].items():
            assert torch.equal(resumed[r]["model"][k], v), k
