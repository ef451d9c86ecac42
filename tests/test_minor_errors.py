"""Issue 31 item 9 (minor failures, each a clear line) and issue 30 goal 6's logs."""
import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import dni_dist
import user_spec
from dni_dist.config import Config
from dni_dist.fit import SpecError, resolve
from conftest import SMALL, run_debug

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
USER = dict(chunks=user_spec.CHUNKS, truncation=user_spec.T, progress=False)


def _train(args, timeout=120):
    return subprocess.run([sys.executable, "-m", "dni_dist.train", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)


# ------------------------------------------------------------------ specs that misbehave
def _growing_batch(index):
    x, y = user_spec.get_batch(index)
    return (x, y) if index < 2 else (torch.cat([x, x[:1]]), torch.cat([y, y[:1]]))


def _detached_loss(out, y, mask):
    return ((out - y) ** 2).mean().detach()


def _no_optimizer(params):
    torch.optim.SGD(params, lr=0.1)  # forgot to return it


growing = dni_dist.Spec(model=user_spec.build, batch=_growing_batch, loss=user_spec.loss_fn, optimizer=user_spec.sgd)
growing_streams = dni_dist.Spec(model=user_spec.build, batch=_growing_batch, loss=user_spec.loss_fn,
                                optimizer=user_spec.sgd, stream_groups=1)
detached = dni_dist.Spec(model=user_spec.build, batch=user_spec.get_batch, loss=_detached_loss)
no_optimizer = dni_dist.Spec(model=user_spec.build, batch=user_spec.get_batch, loss=user_spec.loss_fn,
                             optimizer=_no_optimizer)


@pytest.mark.parametrize("spec,workers", [(growing, 1), (growing, 2), (growing_streams, 2)])
def test_a_batch_size_that_changes_is_one_clear_error_in_every_mode(spec, workers):
    with pytest.raises(SpecError, match=r"Spec\.batch\(2\) returned a batch of 7 sequences but Spec\.batch\(0\) "
                                        r"returned 6: every batch must have the same number of sequences"):
        dni_dist.fit(spec, Config(**USER, workers=workers, steps=4))


def test_a_loss_without_grad_names_the_loss():
    with pytest.raises(SpecError, match=r"Spec\.loss returned a tensor that does not require grad"):
        dni_dist.fit(detached, Config(**USER, workers=2, steps=2))


@pytest.mark.slow
def test_an_optimizer_factory_returning_none_is_one_line():
    r = _train(["--spec", "test_minor_errors:no_optimizer", "--workers", "2", "--chunks", str(user_spec.CHUNKS),
                "--truncation", str(user_spec.T), "--steps", "2", "--no-progress"])
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == ("dni_dist: error in your spec: Spec.optimizer returned NoneType; "
                                                 "expected a torch.optim.Optimizer over the parameters it was given "
                                                 "(does the function end with `return`?)")
    assert "Traceback" not in r.stderr  # nothing raised in the user's code: no traceback to keep


# ------------------------------------------------------------------ --device cuda without CUDA
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(monkeypatch):
    r = _train(["--device", "cuda", "--steps", "2", "--no-progress"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("dni_dist: error: --device cuda: ")
    monkeypatch.setenv("RANK", "0")  # the same check under torchrun, before anything is initialised
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--device cuda: "):
        resolve(Config(**SMALL, device="cuda"))


# ------------------------------------------------------------------ logs and paths
def test_resume_cuts_the_csv_to_the_checkpoint_and_says_where_it_resumed(tmp_path, capsys):
    """A run killed after its last checkpoint wrote CSV rows past it: the resumed run replaces
    them (no step twice) and says "resumed from batch N"."""
    base = dict(SMALL, workers=2, steps=6, checkpoint_every=3, checkpoint_dir=str(tmp_path / "ck"),
                metrics_csv=str(tmp_path / "m.csv"))
    run_debug(Config(**base))
    os.remove(tmp_path / "ck" / "ckpt-00000006.pt")  # as if killed between batch 3's checkpoint and the end
    capsys.readouterr()
    m = run_debug(Config(**base, resume=True))
    assert "resumed from batch 3" in capsys.readouterr().err
    rows = open(tmp_path / "m.csv").read().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert rows[0].startswith("step,") and steps == list(range(len(m["losses"])))


def test_tensorboard_where_it_cannot_write_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = _train(["--steps", "2", "--chunks", "4", "--truncation", "3", "--delay", "3", "--no-progress",
                "--tensorboard", str(blocker / "tb")])
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("dni_dist: error: "
                                                                                     "--tensorboard")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_eval_line_is_not_printed_onto_the_progress_bar(monkeypatch):
    pytest.importorskip("tqdm")
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    dni_dist.fit(user_spec.spec, Config(**{**USER, "progress": True}, workers=1, steps=4, eval_every=2))
    text = err.getvalue()
    at = text.index("eval at batch 2")
    line_start = text.rfind("[", 0, at)
    assert line_start == 0 or text[line_start - 1] in "\r\n", repr(text[max(0, line_start - 60):at + 20])


@pytest.mark.slow
def test_no_step_twice_in_the_csv_after_a_kill_and_resume_under_the_cli(tmp_path):
    args = ["--steps", "6", "--chunks", "4", "--truncation", "3", "--delay", "3", "--batch", "4", "--hidden", "8",
            "--no-progress", "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "3",
            "--metrics-csv", str(tmp_path / "m.csv")]
    assert _train(args).returncode == 0
    os.remove(tmp_path / "ck" / "ckpt-00000006.pt")
    r = _train(args + ["--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from batch 3" in r.stderr
    steps = [r.split(",")[0] for r in open(tmp_path / "m.csv").read().splitlines()[1:]]
    assert len(steps) == len(set(steps))


# ------------------------------------------------------------------ Ray driver and SIGTERM
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_to_the_ray_driver_exits_cleanly(tmp_path):
    pytest.importorskip("ray")
    p = subprocess.Popen([sys.executable, "-m", "dni_dist.train", "--backend", "ray", "--workers", "2",
                          "--steps", "100000", "--chunks", "4", "--truncation", "3", "--delay", "3", "--batch", "4",
                          "--hidden", "8", "--log-every", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=ROOT, env=ENV)
    seen = []
    t0 = time.time()
    for line in p.stdout:  # wait until the actors train
        seen.append(line)
        if "] batch " in line or time.time() - t0 > 240:
            break
    p.send_signal(signal.SIGTERM)
    rest, _ = p.communicate(timeout=120)
    out = "".join(seen) + rest
    assert p.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM" in out and "Traceback" not in out and "SIGTERM received" not in out
    assert "\x1b[" not in out
