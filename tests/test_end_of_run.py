"""Nothing lost at the end of a run, no failure reported as success (issue 31, items 1, 2, 6)."""
import errno
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

import dni_dist
import user_spec
from dni_dist import files
from dni_dist.checkpoint import save
from dni_dist.config import Config
from dni_dist.fit import SpecError, resolve_spec
from dni_dist.runners.common import EndOfRunError, RunFailed
from conftest import SMALL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS])}
SPEC_ARGS = ["--workers", "2", "--chunks", str(user_spec.CHUNKS), "--truncation", str(user_spec.T), "--no-progress"]


def _train(args, timeout=120):
    return subprocess.run([sys.executable, "-m", "dni_dist.train", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)


def _full(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


# specs whose own functions fail (named by import path in the CLI tests below)
def _evaluate_raises(model):
    raise RuntimeError("evaluate exploded")


def _all_nan(index):
    x, y = user_spec.get_batch(index)
    return x * float("nan"), y


eval_fails = dni_dist.Spec(model=user_spec.build, batch=user_spec.get_batch, loss=user_spec.loss_fn,
                           optimizer=user_spec.sgd, evaluate=_evaluate_raises)
all_nan = dni_dist.Spec(model=user_spec.build, batch=_all_nan, loss=user_spec.loss_fn, optimizer=user_spec.sgd)


# ------------------------------------------------------------------ 1. atomic writes
def test_a_failed_write_keeps_the_previous_file_and_says_why_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    files.save_torch({"w": torch.ones(3)}, str(path), "--save")
    monkeypatch.setattr(files, "fault", _full)
    with pytest.raises(files.WriteError) as e:
        files.save_torch({"w": torch.zeros(1000)}, str(path), "--save")
    line = str(e.value)
    assert "\n" not in line and str(path) in line and "ENOSPC" in line and "free of" in line
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))  # the old file, whole
    assert os.listdir(tmp_path) == ["model.pt"]  # no temporary file left


def test_files_are_private_unless_asked(tmp_path, monkeypatch):
    files.write_json(str(tmp_path / "m.json"), {"a": 1})
    save(str(tmp_path / "ck"), 1, {"x": 1})
    assert stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "ck" / "ckpt-00000001.pt").st_mode) == 0o600
    monkeypatch.setenv("DNI_DIST_FILE_MODE", "644")
    files.write_json(str(tmp_path / "m.json"), {"a": 2})
    assert stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode) == 0o644
    monkeypatch.setenv("DNI_DIST_FILE_MODE", "rw")
    with pytest.raises(ValueError, match="DNI_DIST_FILE_MODE='rw'"):
        files.write_json(str(tmp_path / "m.json"), {})


@pytest.mark.slow
def test_cli_run_outputs_are_private(tmp_path):
    r = _train(["--spec", "user_spec:spec", *SPEC_ARGS, "--steps", "3", "--save", str(tmp_path / "m.pt"),
                "--metrics-json", str(tmp_path / "m.json"), "--metrics-csv", str(tmp_path / "m.csv"),
                "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "3"])
    assert r.returncode == 0, r.stderr[-2000:]
    for p in ("m.pt", "m.json", "m.csv", "ck/ckpt-00000003.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / p).st_mode) == 0o600, p


# ------------------------------------------------------------------ 2. a failure at the end
@pytest.mark.slow
def test_evaluate_raising_at_the_end_still_writes_everything(tmp_path):
    out = {k: str(tmp_path / k) for k in ("m.pt", "m.json", "m.csv")}
    r = _train(["--spec", "test_end_of_run:eval_fails", *SPEC_ARGS, "--steps", "4", "--save", out["m.pt"],
                "--metrics-json", out["m.json"], "--metrics-csv", out["m.csv"]])
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" in r.stderr and "evaluate exploded" in r.stderr  # the user's traceback is kept
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("dni_dist: error:") and "Spec.evaluate raised RuntimeError: evaluate exploded" in last
    model = user_spec.build()
    model.load_state_dict(torch.load(out["m.pt"], weights_only=True))  # --save written
    m = json.load(open(out["m.json"]))
    assert len(m["losses"]) > 0 and "Spec.evaluate" in m["error"]
    assert len(open(out["m.csv"]).read().splitlines()) == len(m["losses"]) + 1


def test_fit_raises_after_the_end_with_the_metrics(tmp_path):
    cfg = Config(workers=2, steps=3, chunks=user_spec.CHUNKS, truncation=user_spec.T, progress=False,
                 save=str(tmp_path / "m.pt"))
    with pytest.raises(EndOfRunError, match=r"Spec\.evaluate raised") as e:
        dni_dist.fit(eval_fails, cfg)
    assert isinstance(e.value.__cause__, SpecError) and e.value.metrics["losses"] and e.value.model is not None
    assert (tmp_path / "m.pt").exists()


def test_save_failing_at_the_end_still_writes_the_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "fault", lambda p: _full(p) if p.endswith("m.pt") else None)
    cfg = Config(**{**SMALL, "steps": 3}, workers=2, save=str(tmp_path / "m.pt"),
                 metrics_csv=str(tmp_path / "m.csv"))
    with pytest.raises(EndOfRunError, match=r"cannot write --save .*m\.pt.*ENOSPC") as e:
        dni_dist.fit(resolve_spec(cfg), cfg)
    assert e.value.metrics["losses"] and not (tmp_path / "m.pt").exists()
    assert len(open(tmp_path / "m.csv").read().splitlines()) == len(e.value.metrics["losses"]) + 1


# ------------------------------------------------------------------ 6. no failure reported as success
@pytest.mark.slow
def test_a_short_all_nan_run_fails(tmp_path):
    r = _train(["--spec", "test_end_of_run:all_nan", *SPEC_ARGS, "--steps", "20",
                "--metrics-json", str(tmp_path / "m.json")])
    assert r.returncode == 1, r.stderr[-2000:]
    assert "non-finite" in r.stderr and "Traceback" not in r.stderr
    assert json.load(open(tmp_path / "m.json"))["error"].startswith("training failed")  # written all the same


def test_nan_from_batch_two_fails_even_with_a_long_window():
    cfg = Config(workers=2, steps=20, chunks=user_spec.CHUNKS, truncation=user_spec.T, progress=False)
    with pytest.raises(EndOfRunError, match="non-finite") as e:
        dni_dist.fit(user_spec.nan_spec, cfg)
    assert isinstance(e.value.__cause__, RunFailed)


def test_a_finite_explosion_fails():
    cfg = Config(**{**SMALL, "steps": 20}, workers=2, lr=1e30)
    with pytest.raises(EndOfRunError, match=r"training diverged: the loss grew from"):
        dni_dist.fit(resolve_spec(cfg), cfg)


@pytest.mark.slow
def test_cli_explosion_exits_nonzero_in_one_line():
    r = _train(["--workers", "2", "--chunks", "4", "--steps", "20", "--batch", "4", "--hidden", "8",
                "--truncation", "3", "--delay", "3", "--no-progress", "--lr", "1e30"])
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("dni_dist: error: training diverged")
    assert "Traceback" not in r.stderr


def test_a_healthy_run_with_a_skipped_batch_still_succeeds():
    cfg = Config(**dict(SMALL, steps=4, workers=2), fail_at=1, fail_rank=0, fail_mode="nan")
    m = dni_dist.fit(resolve_spec(cfg), cfg).metrics
    assert m["skipped_chunks"] == cfg.chunks and "error" not in m


@pytest.mark.slow
def test_user_code_errors_keep_their_traceback_and_name_the_function():
    r = _train(["--spec", "test_end_of_run:bad_batch", *SPEC_ARGS, "--steps", "3"])
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" in r.stderr and 'in _bad_batch\n    return int("12a")' in r.stderr  # the user's frame
    assert "Spec.batch(0) raised ValueError: invalid literal" in r.stderr.strip().splitlines()[-1]
    assert "dni_dist: error: invalid literal" not in r.stderr  # not dressed as an option error


def _bad_batch(index):
    return int("12a")


bad_batch = dni_dist.Spec(model=user_spec.build, batch=_bad_batch, loss=user_spec.loss_fn)
