"""Early stopping and keep-best in every launch mode (issue 30 goal 7): the stop is decided by rank 0
at an evaluation, every rank learns it there, and the run ends as a run of fewer --steps ends.
Debug mode is the reference; torchrun (spawned gloo processes) and Ray must stop at the same batch
with the same final metric."""
import dataclasses
import os

import pytest
import torch
import torch.multiprocessing as mp

import dni_dist
from dni_dist.checkpoint import latest
from dni_dist.config import Config
from dni_dist.runners import debug

import user_spec as us
from conftest import free_port

torch.set_num_threads(1)

# evaluations after batches 2, 4, 6, 8: the score improves twice, then not for 2 evaluations
SCORES = [5.0, 4.0, 6.0, 7.0] + [9.0] * 20
BASE = dict(mode="dni", steps=14, eval_every=2, chunks=us.CHUNKS, truncation=us.T, progress=False, seed=0)
STOP = dict(keep_best="score", early_stop=2)


class Scripted:
    """An evaluation: the real mse, and a scripted 'score' by call number (picklable: spawn, Ray)."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, model):
        self.calls += 1
        return {"score": self.values[min(self.calls, len(self.values)) - 1], **us.evaluate(model)}


def spec(values=SCORES):
    return dni_dist.Spec(model=us.build, batch=us.get_batch, loss=us.loss_fn, optimizer=us.sgd,
                         evaluate=Scripted(values), synthesizer={"lr": 1e-2, "gate_warmup": 0}, name="early_stop")


def _rank(rank, world, port, cfg, sp, out_dir):
    import torch.distributed as dist

    from dni_dist.runners.distributed import run_rank
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, m = run_rank(cfg, sp, rank, world)
    finally:
        dist.destroy_process_group()
    torch.save({"model": model.state_dict(), "batches": m["batches"], "losses": m["losses"], "evals": m["evals"],
                "stopped": m.get("stopped")}, os.path.join(out_dir, f"rank{rank}.pt"))


def spawned(cfg, sp, out_dir):
    """K gloo processes running the torchrun code path (run_rank); each rank's result."""
    ctx = mp.start_processes(_rank, args=(cfg.workers, free_port(), cfg, sp, str(out_dir)), nprocs=cfg.workers,
                             join=False, start_method="spawn")
    while not ctx.join(timeout=120):
        pass
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(cfg.workers)]


def same_weights(a, b, exact=True):
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("workers,end", [(1, 8), (2, 9)])
def test_a_stopped_run_ends_as_the_shorter_run_ends(tmp_path, capsys, workers, end):
    """Stopped at the evaluation after batch 8; at K=2 batch 9 is in flight then and finishes: the
    run is then the run of --steps 9 (same losses, same weights, same final evaluation), not a run
    cut mid-pipeline. (At K=1 batch 8 is evaluated twice: at the stop, and after the drain.)"""
    cfg = Config(workers=workers, save=str(tmp_path / "m.pt"), checkpoint_dir=str(tmp_path / "ck"),
                 checkpoint_every=3, **BASE, **STOP)
    model, m = debug.run(cfg, spec())
    batch, state = latest(str(tmp_path / "ck"))
    assert batch == end and state["loop"] is None  # the last checkpoint, taken after the drain
    err = capsys.readouterr().err
    assert "early stop at batch 8: score did not improve for 2 evaluations" in err
    assert m["batches"] == end and m["stopped"].startswith("early stop at batch 8")
    assert [e["batch"] for e in m["evals"]] == [2, 4, 6, 8, end]
    assert (tmp_path / "m.pt").exists()
    assert torch.load(tmp_path / "m.best.pt", weights_only=True)["batch"] == 4
    short_model, short = debug.run(Config(workers=workers, **{**BASE, "steps": end}), spec())
    assert short["losses"] == m["losses"] and len(m["losses"]) > 0
    same_weights(short_model.state_dict(), model.state_dict())
    assert short["evals"][-1]["mse"] == m["evals"][-1]["mse"]  # the final evaluation (after the drain)


def test_a_run_that_keeps_improving_is_not_stopped():
    model, m = debug.run(Config(workers=2, best_path=os.devnull + ".never", **{**BASE, "steps": 6, "keep_best": "score",
                                                                               "early_stop": 2}),
                         spec([3.0, 2.0, 1.0, 0.5]))
    assert m["batches"] == 6 and "stopped" not in m


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_stops_at_the_same_batch_as_debug_mode(tmp_path):
    """K=2 gloo processes (the torchrun code path): every rank ends at the batch debug mode ends at,
    with the same losses, evaluations and final weights; rank 0 writes the best model."""
    cfg = Config(workers=2, best_path=str(tmp_path / "ref.best.pt"), **BASE, **STOP)
    model, ref = debug.run(cfg, spec())
    got = spawned(dataclasses.replace(cfg, best_path=str(tmp_path / "dist.best.pt")), spec(), tmp_path)
    assert ref["batches"] == 9
    for g in got:
        assert g["batches"] == ref["batches"]
        torch.testing.assert_close(torch.tensor(g["losses"]), torch.tensor(ref["losses"]), rtol=1e-6, atol=1e-7)
        same_weights(model.state_dict(), g["model"], exact=False)
    assert got[0]["stopped"] == ref["stopped"] and got[1]["stopped"] is None
    assert [e["batch"] for e in got[0]["evals"]] == [e["batch"] for e in ref["evals"]]
    assert got[0]["evals"][-1]["mse"] == pytest.approx(ref["evals"][-1]["mse"], rel=1e-6)
    best_ref, best = (torch.load(tmp_path / f"{n}.best.pt", weights_only=True) for n in ("ref", "dist"))
    assert best["batch"] == best_ref["batch"] == 4
    same_weights(best_ref["model"], best["model"], exact=False)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_stops_at_the_same_batch_as_debug_mode(tmp_path):
    pytest.importorskip("ray")
    cfg = Config(workers=2, best_path=str(tmp_path / "b.pt"), **BASE, **STOP)
    model, ref = debug.run(cfg, spec())
    got = dni_dist.fit(spec(), dataclasses.replace(cfg, backend="ray", best_path=str(tmp_path / "ray.pt")))
    assert got.metrics["batches"] == ref["batches"] == 9 and got.metrics["stopped"] == ref["stopped"]
    assert got.metrics["evals"][-1]["mse"] == pytest.approx(ref["evals"][-1]["mse"], rel=1e-6)
    same_weights(model.state_dict(), got.model.state_dict(), exact=False)
    assert torch.load(tmp_path / "ray.pt", weights_only=True)["batch"] == 4


def _deaf(rank, world, port, out_dir):
    """Rank 1 waits for rank 0's word; rank 0 never gives it (it waits longer than the timeout)."""
    import time

    import torch.distributed as dist

    from dni_dist.runners.early_stop import broadcast_agree
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        if rank == 1:
            try:
                broadcast_agree("cpu", 2.0)(0)
                msg = "returned"
            except RuntimeError as e:
                msg = str(e)
            with open(os.path.join(out_dir, "rank1.txt"), "w") as f:
                f.write(msg)
        else:
            time.sleep(6)
    finally:
        os._exit(0)  # skip destroy_process_group: the broadcast never completed


@pytest.mark.timeout(120)
def test_a_rank_that_never_hears_rank_0_raises_instead_of_hanging(tmp_path):
    ctx = mp.start_processes(_deaf, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    while not ctx.join(timeout=60):
        pass
    text = (tmp_path / "rank1.txt").read_text()
    assert "did not get rank 0's stop/continue word within --timeout-s 2" in text
