"""Trustworthy runs (issue 11): safe checkpoints, resume that refuses a different experiment,
loud failures, checked messages, misuse of the seed API caught."""
import dataclasses
import os
import pickle
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import dni_dist
from dni_dist import Synthesizer
from dni_dist.checkpoint import CheckpointError, latest, save
from dni_dist.config import Config
from dni_dist.engine.worker import DivergenceError

import user_spec
from conftest import SMALL, free_port, run_debug, run_spawned

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "dni_dist.train", "--workers", "2", "--chunks", "4", "--steps", "4", "--batch", "4",
       "--hidden", "8", "--truncation", "3", "--delay", "3", "--no-progress"]


def _cli(args, **kw):
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=120, cwd=ROOT, **kw)


# ------------------------------------------------------------------ checkpoints
class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_cannot_execute_code(tmp_path):
    d = tmp_path / "ck"
    cfg = Config(**{**SMALL, "steps": 4}, workers=2, checkpoint_dir=str(d), checkpoint_every=2)
    run_debug(cfg)
    marker = tmp_path / "pwned"
    evil = _Exploit()
    evil.marker = str(marker)
    with open(d / "ckpt-99999999.pt", "wb") as f:  # the highest number wins
        pickle.dump({"batch": 99999999, "payload": evil}, f)
    with pytest.warns(RuntimeWarning, match="ckpt-99999999.pt"):
        batch, state = latest(str(d))
    assert not marker.exists()
    assert batch == 4 and "worker" in state  # the previous complete checkpoint


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    save(str(tmp_path), 2, {"x": torch.ones(2)})
    save(str(tmp_path), 4, {"x": torch.zeros(2)})
    path = tmp_path / "ckpt-00000004.pt"
    path.write_bytes(path.read_bytes()[:50])  # truncated
    with pytest.warns(RuntimeWarning, match=r"ckpt-00000004\.pt"):
        batch, state = latest(str(tmp_path))
    assert batch == 2 and torch.equal(state["x"], torch.ones(2))


def test_retention_and_temporary_files(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "ckpt-00000001.pt.tmp.999").write_bytes(b"left by a killed writer")
    run_debug(Config(**{**SMALL, "steps": 5}, workers=1, checkpoint_dir=str(d), checkpoint_every=1,
                     keep_checkpoints=2))
    assert sorted(os.listdir(d)) == ["ckpt-00000004.pt", "ckpt-00000005.pt"]


@pytest.mark.parametrize("change,field", [({"lr": 0.5}, "--lr: 0.001 in the checkpoint, 0.5 now"),
                                          ({"seed": 5}, "--seed: 0 in the checkpoint, 5 now"),
                                          ({"mode": "tbptt"}, "--mode: 'dni' in the checkpoint, 'tbptt' now"),
                                          ({"truncation": 2, "delay": 2}, "--truncation: 3 in the checkpoint")])
def test_resume_refuses_a_different_experiment(tmp_path, change, field):
    base = dict(SMALL, steps=4, workers=2, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    run_debug(Config(**{**base, "steps": 2}))
    with pytest.raises(CheckpointError, match="different experiment") as e:
        run_debug(Config(**{**base, **change}, resume=True))
    assert field in str(e.value)
    # what may change does not stop it
    got = run_debug(Config(**{**base, "timeout_s": 30.0, "metrics_json": str(tmp_path / "m.json")}, resume=True))
    assert len(got["losses"]) > 0


@pytest.mark.slow
def test_cli_resume_without_checkpoint_is_one_line(tmp_path):
    r = _cli(["--checkpoint-dir", str(tmp_path / "empty"), "--resume"])
    assert r.returncode == 2
    assert "--resume: no checkpoint in" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_unwritable_paths_fail_at_start(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    r = _cli(["--checkpoint-dir", str(f), "--checkpoint-every", "2"])
    assert r.returncode == 2 and "is a file, not a directory" in r.stderr
    r = _cli(["--metrics-json", str(tmp_path)])
    assert r.returncode == 2 and "--metrics-json" in r.stderr and "not a writable file path" in r.stderr


# ------------------------------------------------------------------ validation, divergence
@pytest.mark.parametrize("args,flag", [(["--lr", "inf"], "lr"), (["--clip", "nan"], "clip"), (["--clip", "-1"], "clip"),
                                       (["--timeout-s", "inf"], "timeout_s"), (["--synth-lr", "-1"], "synth_lr"),
                                       (["--workers", "3"], "chunks"), (["--task", "nope"], "--task")])
def test_bad_numbers_are_one_line_errors(args, flag):
    r = _cli(args)
    assert r.returncode == 2, r.stderr
    assert flag in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3  # usage + the error


@pytest.mark.parametrize("kw,match", [({"clip": -1}, "clip"), ({"scale_decay": 5}, "scale_decay"),
                                      ({"lr": float("nan")}, "lr"), ({"is_lstm": "yes"}, "is_lstm"),
                                      ({"size": True}, "size"), ({"factor": float("inf")}, "factor")])
def test_synthesizer_constructor_validates(kw, match):
    with pytest.raises(ValueError, match=match):
        Synthesizer(**{"size": 4, **kw})


def test_a_diverged_run_stops_with_an_error():
    cfg = Config(workers=2, steps=60, chunks=user_spec.CHUNKS, truncation=user_spec.T, progress=False,
                 divergence_window=20)
    with pytest.raises(DivergenceError, match=r"non-finite loss or gradient"):
        dni_dist.fit(user_spec.nan_spec, cfg)


@pytest.mark.slow
def test_diverged_cli_run_exits_nonzero():
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "tests")}
    r = subprocess.run([sys.executable, "-m", "dni_dist.train", "--spec", "user_spec:nan_spec", "--workers", "2",
                        "--chunks", "4", "--truncation", "3", "--steps", "60", "--divergence-window", "20",
                        "--no-progress"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "training diverged" in r.stderr and "Traceback" not in r.stderr


def test_nan_boundary_state_never_poisons_the_synthesizer():
    synth = Synthesizer(4, is_lstm=False, num_layers=1)
    rnn = torch.nn.GRU(3, 4, batch_first=True)
    h = None
    with pytest.warns(RuntimeWarning):
        for c in range(4):
            out, h = rnn(torch.randn(2, 2, 3), h)
            if c == 1:
                h = h * float("nan")
            loss = out.sum()
            h = synth.backward_synthetic(h, loss)
            loss.backward()
        synth.step()
        assert synth.stats.nonfinite_targets >= 1  # counted on the device, warned about when read
    assert all(torch.isfinite(p).all() for p in synth.parameters())
    assert torch.isfinite(synth.target_ms) and torch.isfinite(synth.fit).all()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_skipped_chunks_are_counted_the_same_in_every_mode(tmp_path):
    """NaN inputs in batch 1's first chunk: its 4 chunks are skipped (the NaN state travels on),
    each counted once, and every rank reports the same total as debug mode."""
    cfg = Config(**dict(SMALL, steps=4, workers=2), fail_at=1, fail_rank=0, fail_mode="nan")
    m = run_debug(cfg)
    assert m["skipped_chunks"] == cfg.chunks
    got = run_spawned(dataclasses.replace(cfg, backend="torch"), tmp_path)
    assert [r["skipped"] for r in got] == [cfg.chunks, cfg.chunks]


# ------------------------------------------------------------------ the seed API's misuse
def test_backward_synthetic_twice_on_one_state_is_an_error():
    synth = Synthesizer(4, is_lstm=False)
    rnn = torch.nn.GRU(3, 4)
    out, h = rnn(torch.randn(2, 2, 3))
    synth.backward_synthetic(h, out.sum())
    with pytest.raises(ValueError, match="twice on the same state"):
        synth.backward_synthetic(h, out.sum())


def test_backward_synthetic_after_loss_backward_is_an_error():
    synth = Synthesizer(4, is_lstm=False)
    rnn = torch.nn.GRU(3, 4)
    out, h = rnn(torch.randn(2, 2, 3))
    loss = out.sum()
    h = synth.backward_synthetic(h, loss)
    loss.backward()
    out, h = rnn(torch.randn(2, 2, 3), h)
    loss = out.sum()
    loss.backward()  # wrong order: the synthetic gradient can no longer ride on this loss
    with pytest.raises(ValueError, match=r"after this chunk's loss.backward\(\)"):
        synth.backward_synthetic(h, loss)


# ------------------------------------------------------------------ messages
def _raw_pair(rank, port, scenario, q):
    import datetime

    import torch.distributed as dist

    from dni_dist.transport.base import Message
    from dni_dist.transport.shm_messages import MailboxMessages
    from dni_dist.transport.factory import process_transport
    from dni_dist.transport.wire import encode as _encode
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=20))
    path, scenario = scenario.split("-")
    tr = process_transport(5.0, reduce="backend" if path == "gloo" else "shared-memory")
    assert isinstance(tr.messages, MailboxMessages) == (path == "mailbox")
    msg = Message("state", 3, 1, ((1, 4, 16),), torch.float32)
    try:
        if rank == 0:
            h = _encode(msg)
            if scenario == "declared":
                h[5] = 10  # a header that lies about the payload size
            short = torch.zeros(10)  # 10 floats, not 64 + marker
            if path == "gloo":
                dist.send(h, 1, group=tr.backend.group)
                if scenario == "short":
                    dist.send(short, 1, group=tr.backend.group)
            else:
                box = tr.messages.box(0, 1)
                box.post(_encode(msg), torch.full((65,), 8191.0))  # a whole one first: the slots hold its bytes
                box.post(h, short if scenario == "short" else torch.full((65,), 8191.0))
            time.sleep(4)
        else:
            try:
                if path == "mailbox":
                    tr.recv(0, msg)
                tr.recv(0, msg)
                q.put(("ok", ""))
            except Exception as e:  # noqa: BLE001 - the test inspects it
                q.put((type(e).__name__, str(e)))
    finally:
        q.close()
        q.join_thread()
        os._exit(0)


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["gloo", "mailbox"])
@pytest.mark.parametrize("scenario,match", [("short", "arrived short"), ("declared", "declares 10 values")])
def test_wrong_sized_payload_is_a_message_error(path, scenario, match):
    """Through gloo or a shared-memory mailbox (whose slot still holds an earlier, whole
    message's bytes), a short payload or a lying header is an error, never stale data."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_raw_pair, args=(r, port, f"{path}-{scenario}", q)) for r in range(2)]
    for p in procs:
        p.start()
    kind, msg = q.get(timeout=40)
    for p in procs:
        p.join(10)
    assert kind == "MessageError", msg
    assert "from worker 0" in msg and match in msg


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_frozen_worker_is_named_not_the_healthy_one(tmp_path):
    """Worker 1 is SIGSTOPped mid-run: the error names worker 1, not the rank that waited."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dni_dist.train", "--chunks", "4", "--steps", "6", "--batch", "4", "--hidden", "8",
           "--truncation", "3", "--delay", "3", "--no-progress", "--fail-at", "2", "--fail-rank", "1",
           "--fail-mode", "stop", "--timeout-s", "5"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         start_new_session=True)
    try:
        _, err = p.communicate(timeout=180)
    finally:
        try:
            os.killpg(p.pid, 9)  # the stopped worker too, if torchrun left it
        except ProcessLookupError:
            pass
    assert p.returncode != 0
    assert "worker 1 never reached it" in err or "from worker 1" in err, err[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_local_ray_is_private(monkeypatch):
    """Without --ray-address the run starts its own Ray (address="local"), even when RAY_ADDRESS
    points at another job's cluster."""
    ray = pytest.importorskip("ray")
    from dni_dist.runners.ray_actors import init_ray
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens there: attaching would fail
    assert not ray.is_initialized()
    assert init_ray(ray, Config(**SMALL))
    try:
        assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2
    finally:
        ray.shutdown()


def test_the_torchrun_wrapper_rendezvous_on_loopback():
    text = open(os.path.join(ROOT, "launch", "torchrun.sh")).read()
    assert '--rdzv-endpoint "127.0.0.1:$PORT"' in text and "GLOO_SOCKET_IFNAME" in text
    assert "--standalone" not in text.split("exec", 1)[1]  # torchrun's standalone store binds every interface
