"""The gate's scheduled read (``gate_check_every``) in the engine: the replicas read at the same
ticks and hold the same view, so a checkpoint of one resumes them all exactly, and one worker's
run equals the seed API's loop with the same schedule."""
import json
import shutil

from dni_dist.config import Config
from dni_dist.fit import resolve_spec
from dni_dist.runners import debug

from conftest import seed_api_losses

OPTS = {"gate_warmup": 0, "gate_check_every": 4}
SMALL = dict(steps=6, chunks=4, batch=4, hidden=8, progress=False, delay=3, truncation=3, synth_lr=1e-2,
             synth_options=json.dumps(OPTS))


def test_a_resumed_two_worker_run_reads_the_gate_as_the_whole_run_did(tmp_path, monkeypatch):
    """Only worker 0's state is checkpointed: the replicas' clocks must be equal for it to stand for all."""
    from dni_dist.engine.worker import Worker
    seen, backward = {}, Worker.backward

    def recorded(self):
        backward(self)
        seen.setdefault(self.position, []).append(list(self.synth._clock_now()))
    monkeypatch.setattr(Worker, "backward", recorded)
    base = dict(SMALL, workers=2, checkpoint_every=3)
    cfg = Config(**base, checkpoint_dir=str(tmp_path / "a"))
    whole = debug.run(cfg, resolve_spec(cfg))[1]
    assert whole["synth"]["jtg_passes"] > 0  # the gate opened on a scheduled read: injections happened
    assert seen[0] == seen[1] and len(seen[0]) > 10  # tick by tick, the same clock and view
    # killed after the mid-run checkpoint at batch 3 (batches in flight: saved, not drained)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "ckpt-00000003.pt", tmp_path / "b" / "ckpt-00000003.pt")
    again = Config(**base, checkpoint_dir=str(tmp_path / "b"), resume=True)
    assert debug.run(again, resolve_spec(again))[1]["losses"] == whole["losses"]


def test_one_worker_equals_the_seed_api_loop_with_a_read_every_four_chunks():
    cfg = Config(mode="dni", workers=1, **SMALL)
    got = debug.run(cfg, resolve_spec(cfg))[1]
    assert got["synth"]["jtg_passes"] > 0
    want, _, _ = seed_api_losses(cfg, OPTS)
    assert got["losses"] == want
