"""Fail loudly, never hang, resume exactly (issue 5)."""
import dataclasses
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from dni_dist.checkpoint import latest, save
from dni_dist.config import Config

from dni_dist.fit import resolve_spec
from dni_dist.tasks.specs import check_task
from dni_dist.runners import debug
from dni_dist.testing.faults import WorkerFailure
from conftest import SMALL, free_port, run_debug, run_spawned, synth_opts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ config validation
@pytest.mark.parametrize("kw,match", [
    ({"workers": 3}, r"chunks per sequence \(4\) must be a positive multiple of workers \(3\)"),
    ({"delay": 12}, r"delay\(12\) must be in \[0, chunks\*truncation=12\)"),
    ({"task": "copy", "copy_len": 6}, r"2\*copy_len\+1 = 13 <= chunks\*truncation = 12"),
    ({"backend": "mpi"}, r"backend='mpi': expected 'debug' or 'torch' or 'ray'"),
    ({"checkpoint_every": 2}, "checkpoint_every > 0 needs checkpoint_dir"),
    ({"resume": True}, "resume needs checkpoint_dir"),
    ({"batch": 0}, r"batch=0: expected a positive int"),
    ({"timeout_s": 0}, r"timeout_s=0"),
])
def test_config_names_the_bad_value(kw, match):
    """Config checks its own fields; a built-in task checks its shape when it is built (check_task:
    a user's own spec is never held to the built-in task's options)."""
    with pytest.raises(ValueError, match=match):
        check_task(Config(**{**SMALL, **kw}))


@settings(max_examples=60, deadline=None)
@given(chunks=st.integers(1, 12), workers=st.integers(1, 6), truncation=st.integers(1, 6), delay=st.integers(0, 40))
def test_config_accepts_exactly_the_valid_splits(chunks, workers, truncation, delay):
    ok = chunks % workers == 0 and delay < chunks * truncation
    kw = dict(chunks=chunks, workers=workers, truncation=truncation, delay=delay)
    if ok:
        cfg = Config(**kw)
        check_task(cfg)
        assert cfg.length == chunks * truncation
    else:
        with pytest.raises(ValueError):
            check_task(Config(**kw))


@settings(max_examples=40, deadline=None)
@given(layers=st.integers(1, 3), batch=st.integers(1, 5), size=st.integers(3, 9), lstm=st.booleans(),
       wrong=st.integers(-2, 2))
def test_synthesizer_accepts_its_shapes_and_rejects_others(layers, batch, size, lstm, wrong):
    from dni_dist import Synthesizer
    synth = Synthesizer(size, is_lstm=lstm, num_layers=layers)
    h = torch.randn(layers, batch, size + wrong)
    state = (h, h.clone()) if lstm else h
    if wrong == 0:
        out = synth(state)
        assert [t.shape for t in (out if lstm else (out,))] == [h.shape] * (2 if lstm else 1)
    else:
        with pytest.raises(ValueError, match=f"last dimension {size + wrong}"):
            synth(state)


def test_ray_backend_without_ray_says_how_to_install(monkeypatch):
    from dni_dist.runners import ray_actors
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'dni_dist\[ray\]'"):
        ray_actors.run(Config(**SMALL, backend="ray"))


# ------------------------------------------------------------------ messages and timeouts
def _spawn_pair_or_more(target, scenario, world=2, answers=None):
    """Run ``target(rank, port, scenario, queue[, world])`` in ``world`` spawned processes; return
    the first ``answers`` (default: one per process) items they put on the queue."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    extra = (world,) if world != 2 else ()
    procs = [ctx.Process(target=target, args=(r, port, scenario, q, *extra)) for r in range(world)]
    for p in procs:
        p.start()
    got = [q.get(timeout=40) for _ in range(world if answers is None else answers)]
    for p in procs:
        p.join(10)
    return got


def _transport_pair(rank, port, scenario, q):
    import datetime

    import torch.distributed as dist

    from dni_dist.transport.base import Message
    from dni_dist.transport.factory import process_transport
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=20))
    tr = process_transport(2.0)
    sent = Message("state", 3, 1, ((1, 4, 8), (1, 4, 8)), torch.float32)
    try:
        if rank == 0 and scenario == "mismatch":
            tr.send(1, sent, [torch.zeros(1, 4, 8), torch.zeros(1, 4, 8)])
            time.sleep(3)
        elif rank == 1:
            expected = dataclasses.replace(sent, shapes=((1, 4, 9), (1, 4, 9))) if scenario == "mismatch" else sent
            t0 = time.time()
            try:
                tr.recv(0, expected)
                q.put(("ok", ""))
            except Exception as e:  # noqa: BLE001 - the test inspects it
                q.put((type(e).__name__, f"{e} after {time.time() - t0:.1f}s"))
        else:
            time.sleep(4)
    finally:
        q.close()
        q.join_thread()  # flush the queue's feeder thread before the hard exit
        os._exit(0)  # skip process-group teardown: the peer may already be gone


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", ["mismatch", "silence"])
def test_bad_or_missing_message_fails_fast_naming_the_sender(scenario):
    [(kind, msg)] = _spawn_pair_or_more(_transport_pair, scenario, answers=1)
    if scenario == "mismatch":
        assert kind == "MessageError"
        assert "from worker 0: expected state of batch 3 chunk 1 with shapes [(1, 4, 9), (1, 4, 9)]" in msg
        assert "received state of batch 3 chunk 1 with shapes [(1, 4, 8), (1, 4, 8)]" in msg
    else:
        assert kind == "TimeoutError" and "from worker 0" in msg


def _shm_pair(rank, port, scenario, q, world=2):
    import datetime

    import torch.distributed as dist

    from dni_dist.transport import shm
    from dni_dist.transport.factory import process_transport
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))
    if scenario == "no-shm" and rank == 1:
        shm.available = lambda: False  # as on a host without /dev/shm
    if scenario.startswith("full") and rank == 0:
        def full(fd, offset, length):  # as in a container with a small /dev/shm
            raise OSError(28, "No space left on device")
        os.posix_fallocate = full
    try:
        tr = process_transport(5.0, reduce="auto" if scenario == "full-auto" else "shared-memory")
        n = {"sizes": 10 + 2 * rank, "later-sizes": 10}.get(scenario, 10)
        value = ORDER_TERMS[rank] if scenario == "order" else rank + 1.0
        got = tr.all_reduce_sum(torch.full((n,), value))
        if scenario == "later-sizes":  # same size first, then a smaller, different one within the segment
            got = tr.all_reduce_sum(torch.ones(8 - rank))
        if scenario in ("late", "dies"):  # worker 1 never joins the second sum: sleeping, or gone
            if rank == 1:
                if scenario == "late":
                    time.sleep(8)
                os._exit(0)
            t0 = time.time()
            try:
                tr.all_reduce_sum(torch.ones(10))
            except Exception as e:  # noqa: BLE001 - the test inspects it
                q.put((type(e).__name__, f"{e} after {time.time() - t0:.0f}s"))
                raise SystemExit from None
        q.put(("ok", got.tolist()))
    except Exception as e:  # noqa: BLE001 - the test inspects it
        q.put((type(e).__name__, str(e)))
    finally:
        q.close()
        q.join_thread()
        os._exit(0)


ORDER_TERMS = (1e8, 1.0, -1e8, 1.0)  # float32: added in rank order 1, in reverse 0, exactly 2


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_shared_memory_sum_adds_in_rank_order_like_debug_mode():
    """K=4: the sum a worker gets has the bits of debug mode's (rank order), for any K."""
    from dni_dist.transport.local import LocalHub
    hub = LocalHub(4)
    local = hub.transports()
    handles = [t.start_all_reduce(torch.full((10,), v)) for t, v in zip(local, ORDER_TERMS)]
    want = [t.finish(h).tolist() for t, h in zip(local, handles)][0]
    assert want == [1.0] * 10  # the terms do tell orders apart
    got = _spawn_pair_or_more(_shm_pair, "order", world=4)
    assert got == [("ok", want)] * 4


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", ["ok", "sizes", "later-sizes", "no-shm", "full", "full-auto", "late", "dies"])
def test_shared_memory_sum_checks_its_workers(scenario):
    """Both workers get the sum; different buffer sizes, a worker that cannot map /dev/shm, or a
    /dev/shm without room are errors on every worker that say so, never a wrong sum, a hang or a
    SIGBUS; with --reduce auto a full /dev/shm falls back to the backend's all-reduce."""
    got = _spawn_pair_or_more(_shm_pair, scenario, answers=1 if scenario in ("late", "dies") else 2)
    kinds = {k for k, _ in got}
    if scenario == "late":  # worker 0 waits its timeout (5 s), then names who never came
        assert kinds == {"TimeoutError"} and "worker 1 never reached it" in got[0][1], got
    elif scenario == "dies":  # noticed within a fraction of a second, not after the timeout
        assert kinds == {"ConnectionError"} and "worker 1 exited" in got[0][1] and got[0][1].endswith("after 0s"), got
    elif scenario in ("ok", "full-auto"):
        assert got == [("ok", [3.0] * 10)] * 2
    elif scenario == "sizes":
        assert kinds == {"MessageError"} and all("differ in size" in m for _, m in got), got
    elif scenario == "later-sizes":
        assert kinds == {"MessageError"} and all("sums disagree" in m for _, m in got), got
    elif scenario == "full":
        assert kinds == {"ValueError"} and all("could not be reserved in /dev/shm" in m and "--shm-size" in m
                                               for _, m in got), got
    else:
        assert kinds == {"ValueError"} and all("no writable /dev/shm on worker 1" in m for _, m in got), got


def test_shared_memory_sum_is_one_at_a_time_and_cpu_only():
    from dni_dist.transport.shm import SharedSlots
    slots = SharedSlots(0, 1, f"test{os.getpid()}", barrier=lambda v: v)
    seq, n = slots.write(torch.arange(4.0))
    with pytest.raises(RuntimeError, match="one sum in flight"):
        slots.write(torch.arange(4.0))
    assert slots.total(seq, n).tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="CPU tensors only"):
        slots.write(torch.zeros(2, device="meta"))


def test_reduce_shared_memory_on_gpu_is_a_config_error():
    with pytest.raises(ValueError, match=r"reduce='shared-memory': expected 'auto' or 'backend' with --device cuda"):
        Config(reduce="shared-memory", device="cuda")


# ------------------------------------------------------------------ checkpoints and restarts
@pytest.mark.parametrize("warmup", [0, 8])
def test_debug_resume_is_exact(warmup, tmp_path):
    """warmup=8: the gate's warm-up ends after the checkpoint (6 updates by batch 3), so its
    count must be saved and restored for the resumed run to open the gate when the whole run does."""
    base = dict(SMALL, steps=6, workers=2, checkpoint_every=3, synth_options=synth_opts(gate_warmup=warmup))
    whole = run_debug(Config(**base, checkpoint_dir=str(tmp_path / "a")))["losses"]
    kill = dict(checkpoint_dir=str(tmp_path / "b"), fail_at=4, fail_rank=1, fail_mode="raise")  # after ckpt-3
    with pytest.raises(WorkerFailure):
        run_debug(Config(**base, **kill))
    resumed = run_debug(Config(**base, **kill, resume=True))["losses"]
    assert resumed == whole


def test_half_written_checkpoint_is_never_loaded(tmp_path):
    save(str(tmp_path), 2, {"x": 1})
    (tmp_path / "ckpt-00000004.pt.tmp.123").write_bytes(b"half a file")
    (tmp_path / "ckpt-00000006.pt.tmp.9").write_bytes(b"")
    batch, state = latest(str(tmp_path))
    assert batch == 2 and state["x"] == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_torch_distributed_resume_matches_debug(tmp_path):
    base = dict(SMALL, steps=6, workers=2, checkpoint_every=3)
    whole = run_debug(Config(**base, checkpoint_dir=str(tmp_path / "ref")))["losses"]
    d = str(tmp_path / "dist")
    run_spawned(Config(**base, backend="torch", checkpoint_dir=d), tmp_path)
    os.remove(os.path.join(d, "ckpt-00000006.pt"))  # resume from ckpt-3, taken with batches in flight
    losses = run_spawned(Config(**base, backend="torch", checkpoint_dir=d, resume=True), tmp_path)
    assert losses[0]["losses"] == whole


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_torchrun_survives_a_killed_worker(tmp_path):
    d = tmp_path / "ck"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", "-m", "dni_dist.train", "--workers", "2", "--chunks", "4", "--steps", "6",
           "--batch", "4", "--hidden", "8", "--truncation", "3", "--delay", "3", "--no-progress",
           "--checkpoint-dir", str(d), "--checkpoint-every", "2", "--fail-at", "3", "--fail-rank", "1",
           "--fail-mode", "kill", "--timeout-s", "30", "--synth-lr", "0.01", "--synth-options", SMALL["synth_options"],
           "--metrics-json", str(tmp_path / "m.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (d / "failed-once-rank1").exists()  # the kill happened
    import json
    m = json.load(open(tmp_path / "m.json"))
    ref = run_debug(Config(**dict(SMALL, steps=6, workers=2, checkpoint_every=2), checkpoint_dir=str(tmp_path / "r")))
    assert m["losses"] == ref["losses"]  # resumed from batch 2's checkpoint: same computation


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_failing_worker_stops_every_worker_fast(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dni_dist.train", "--workers", "2", "--chunks", "4", "--steps", "6", "--batch", "4",
           "--hidden", "8", "--truncation", "3", "--delay", "3", "--no-progress", "--fail-at", "2",
           "--fail-rank", "0", "--timeout-s", "20"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=ROOT)  # a hang fails here
    assert r.returncode != 0
    assert "worker 0: failing on purpose at batch 2" in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_restarts_the_group_after_a_killed_actor(tmp_path):
    pytest.importorskip("ray")
    from dni_dist.runners import ray_actors
    base = dict(SMALL, steps=6, workers=2, checkpoint_every=2)
    cfg = Config(**base, backend="ray", checkpoint_dir=str(tmp_path / "ray"), fail_at=3, fail_rank=1,
                 fail_mode="kill", max_restarts=1, timeout_s=30)
    got = ray_actors.run(cfg)[1]
    ref = run_debug(Config(**base, checkpoint_dir=str(tmp_path / "ref")))
    assert got["restarts"] == 1
    assert got["losses"] == ref["losses"]


@pytest.mark.parametrize("lookahead", [1, 2])
def test_nan_input_is_skipped_counted_and_never_poisons_weights(lookahead, tmp_path):
    """lookahead=2: the skipped chunk after a block boundary still answers the previous worker's
    waiting cut (with a NaN target, which keeps its one-step target), so no one waits forever."""
    cfg = Config(**dict(SMALL, steps=4, workers=2, synth_options=synth_opts(lookahead=lookahead)), fail_at=1,
                 fail_rank=0, fail_mode="nan")
    model, m = debug.run(cfg, resolve_spec(cfg))
    assert m["skipped_chunks"] == cfg.chunks  # batch 1's chunks: the NaN state travels on, each skipped once
    assert all(v == v for v in m["losses"])  # no NaN step loss
    assert all(torch.isfinite(p).all() for p in model.parameters())
    clean = run_debug(Config(**dict(SMALL, steps=4, workers=2)))
    assert len(m["losses"]) == len(clean["losses"])


# ------------------------------------------------------------------ shared-memory mailboxes
def _ends(tmp, alive=lambda: True, timeout_s=1.0):
    from dni_dist.transport.mailbox import Mailbox
    name = os.path.join("/dev/shm", f"dni_dist_test_{os.getpid()}_{tmp.name}")
    return (Mailbox(name, 3, timeout_s, alive, "worker 1"), Mailbox(name, 3, timeout_s, alive, "worker 0"), name)


def test_mailbox_delivers_in_order_grows_and_leaves_nothing_behind(tmp_path):
    """Messages arrive in order, whole, through ring wrap-around and a move to a larger file when
    a message outgrows the slots; the receiver's copies do not change when the slot is reused."""
    from dni_dist.transport.mailbox import SLOTS
    tx, rx, name = _ends(tmp_path)
    sizes = [4] * (SLOTS + 2) + [9, 2, 40, 4]  # wraps, then two moves
    got = []
    for i, n in enumerate(sizes):
        tx.post(torch.tensor([i, n, 7]), torch.full((n,), float(i)))
        h, raw = rx.take()
        got.append((h.tolist(), raw.view(torch.float32).tolist()))  # exactly what was posted
    assert got == [([i, n, 7], [float(i)] * n) for i, n in enumerate(sizes)]
    for i in range(SLOTS):  # a full ring: posts without takes, then all taken in order
        tx.post(torch.tensor([i, 1, 0]), torch.tensor([float(i)]))
    firsts = [rx.take() for _ in range(SLOTS)]
    assert [h[0].item() for h, _ in firsts] == list(range(SLOTS))
    assert [r.view(torch.float32).item() for _, r in firsts] == [float(i) for i in range(SLOTS)]
    tx.close()
    rx.close()
    leftovers = [f for f in os.listdir("/dev/shm") if f.startswith(os.path.basename(name))]
    assert leftovers == []


def test_mailbox_waits_are_bounded_and_notice_a_dead_peer(tmp_path):
    from dni_dist.transport.mailbox import SLOTS
    from dni_dist.transport.shm import PeerGone
    tx, rx, _ = _ends(tmp_path, timeout_s=0.5)
    with pytest.raises(TimeoutError, match="waited 0.5s for the first message from worker 0"):
        rx.take()
    for i in range(SLOTS):
        tx.post(torch.tensor([i, 1, 0]), torch.ones(1))
    with pytest.raises(TimeoutError, match="a free slot in the mailbox to worker 1"):
        tx.post(torch.tensor([9, 1, 0]), torch.ones(1))
    # a dead peer is noticed, not waited out: with a 30 s timeout the error must name the exit
    tx2, rx2, _ = _ends(tmp_path / "dead", alive=lambda: False, timeout_s=30.0)
    with pytest.raises(PeerGone, match="worker 0 exited while this worker waited"):
        rx2.take()
    for box in (tx, rx, tx2, rx2):
        box.close()


def test_mailbox_without_room_in_dev_shm_says_what_to_do(tmp_path, monkeypatch):
    def full(fd, offset, length):  # as in a container with a small /dev/shm
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    tx, _, name = _ends(tmp_path)
    with pytest.raises(OSError, match=r"could not be reserved in /dev/shm.*--shm-size.*--reduce backend"):
        tx.post(torch.tensor([0, 1, 0]), torch.ones(1))
    # an empty marker tells the receiver to continue over the backend (issue 31); the sender's close removes it
    assert [f for f in os.listdir("/dev/shm") if f.startswith(os.path.basename(name))] == \
        [os.path.basename(name) + "_1.backend"]
    tx.close()
    assert [f for f in os.listdir("/dev/shm") if f.startswith(os.path.basename(name))] == []
