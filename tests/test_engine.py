"""The engine: schedules as data, K=1 equals the seed-API loop, debug == torchrun == Ray."""
import dataclasses
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dni_dist.checkpoint import latest
from dni_dist.config import Config
from dni_dist.engine.schedule import Schedule
from dni_dist.engine.worker import build, make_batch
from dni_dist.loops import train_batch
from dni_dist.runners import debug

SMALL = dict(steps=5, chunks=4, batch=4, hidden=8, progress=False, delay=3, truncation=3, synth_lr=1e-2)


@pytest.mark.parametrize("chunks,workers,batches", [(4, 1, 3), (4, 2, 3), (6, 3, 2), (8, 4, 5), (2, 2, 1)])
def test_schedule_is_consistent(chunks, workers, batches):
    s = Schedule(chunks, workers, batches)
    s.check()
    assert s.ticks == (batches + workers - 1) * chunks // workers
    busy = [sum(s.action(w, t) is not None for w in range(workers)) for t in range(s.ticks)]
    # steady state: every worker computes every tick
    assert max(busy) == workers or batches < workers


def test_schedule_table_prints_actions():
    table = Schedule(4, 2, 2).table()
    assert table.splitlines()[1].split()[2:5] == ["-", "-", "1B0C2"]


def test_schedule_rejects_bad_split():
    with pytest.raises(ValueError, match=r"chunks per sequence \(5\) must be a positive multiple of workers \(2\)"):
        Schedule(5, 2, 1)


@pytest.mark.parametrize("mode", ["dni", "tbptt"])
def test_one_worker_equals_the_seed_api_loop(mode, tmp_path):
    cfg = Config(mode=mode, workers=1, checkpoint_dir=str(tmp_path), checkpoint_every=SMALL["steps"], **SMALL)
    got = debug.run(cfg)["losses"]
    model, synth, opt = build(cfg)
    want = []
    for b in range(cfg.steps):
        _seed_loop(model, synth, opt, *make_batch(cfg, b), cfg, want)
    assert got == want  # bitwise
    _, state = latest(str(tmp_path))
    for k, v in model.state_dict().items():
        assert torch.equal(state["worker"]["model"][k], v), k


def _seed_loop(model, synth, opt, x, y, m, cfg, out):
    """The README's loop with its three added lines (Synthesizer, backward_synthetic, step)."""
    from dni_dist import targets as tg
    state = model.initial_state(x.shape[0])
    for c in range(cfg.chunks):
        sl = slice(c * cfg.truncation, (c + 1) * cfg.truncation)
        loss, state = model.chunk_loss(x[:, sl], y[:, sl], m[:, sl], state)
        if cfg.mode == "dni":
            state = synth.backward_synthetic(state, loss, last=c == cfg.chunks - 1)
        else:
            state = tg.detach(state)
        out.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if cfg.mode == "dni":
        synth.step()


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _spawned_rank(rank, world, port, cfg, out_dir):
    import json

    import torch.distributed as dist

    from dni_dist.runners.distributed import run_rank
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        m = run_rank(cfg, rank, world)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(m["losses"], f)


def run_spawned(cfg, out_dir):
    """K gloo processes (torch.multiprocessing spawn), bounded by a timeout."""
    import json
    ctx = mp.start_processes(_spawned_rank, args=(cfg.workers, _free_port(), cfg, str(out_dir)),
                             nprocs=cfg.workers, join=False, start_method="spawn")
    while not ctx.join(timeout=120):
        pass
    return [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(cfg.workers)]


def _final_model(directory):
    return latest(str(directory))[1]["worker"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode,sync", [("dni", "exact"), ("tbptt", "exact"), ("dni", "overlap")])
def test_torch_distributed_matches_debug_bitwise(mode, sync, tmp_path):
    base = Config(mode=mode, sync=sync, workers=2, checkpoint_every=SMALL["steps"], checkpoint_dir="unset", **SMALL)
    ref_dir, dist_dir = tmp_path / "debug", tmp_path / "dist"
    ref = debug.run(dataclasses.replace(base, checkpoint_dir=str(ref_dir)))
    losses = run_spawned(dataclasses.replace(base, backend="torch", checkpoint_dir=str(dist_dir)), tmp_path)
    assert losses[0] == losses[1] == ref["losses"]
    a, b = _final_model(ref_dir), _final_model(dist_dir)
    for part in ("model", "synth"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)


@pytest.mark.timeout(240)
def test_four_workers_match_debug(tmp_path):
    """K=4: gloo's all-reduce may add in another order than rank order: equal to 1e-6 relative."""
    base = Config(workers=4, checkpoint_every=3, checkpoint_dir="unset", **{**SMALL, "steps": 3})
    ref = debug.run(dataclasses.replace(base, checkpoint_dir=str(tmp_path / "debug")))
    losses = run_spawned(dataclasses.replace(base, backend="torch", checkpoint_dir=str(tmp_path / "dist")), tmp_path)
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(ref["losses"]), rtol=1e-6, atol=1e-7)
    a, b = _final_model(tmp_path / "debug"), _final_model(tmp_path / "dist")
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-6, atol=1e-7)


@pytest.mark.timeout(300)
def test_ray_matches_debug_bitwise(tmp_path):
    pytest.importorskip("ray")
    from dni_dist.runners import ray_actors
    base = Config(workers=2, checkpoint_every=SMALL["steps"], checkpoint_dir="unset", **SMALL)
    ref = debug.run(dataclasses.replace(base, checkpoint_dir=str(tmp_path / "debug")))
    got = ray_actors.run(dataclasses.replace(base, backend="ray", checkpoint_dir=str(tmp_path / "ray")))
    assert got["losses"] == ref["losses"]
    a, b = _final_model(tmp_path / "debug"), _final_model(tmp_path / "ray")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_overlap_is_one_step_stale_not_broken():
    """Overlap applies every gradient one tick late: as many steps, the same first tick (initial
    weights in both), different numbers after."""
    exact = debug.run(Config(**SMALL, workers=2))["losses"]
    late = debug.run(Config(**SMALL, workers=2, sync="overlap"))["losses"]
    assert len(late) == len(exact)
    assert late[0] == exact[0]
    assert late != exact


def test_entry_point_writes_json_and_csv(tmp_path):
    import json

    from dni_dist.train import main
    args = ["--workers", "2", "--chunks", "4", "--steps", "3", "--batch", "4", "--hidden", "8", "--no-progress",
            "--metrics-json", str(tmp_path / "m.json"), "--metrics-csv", str(tmp_path / "m.csv")]
    assert main(args) == 0
    m = json.load(open(tmp_path / "m.json"))
    assert {"losses", "tokens_per_s", "peak_rss_mb", "config"} <= set(m)
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and len(rows) == len(m["losses"]) + 1
