"""A checkpoint directory belongs to one experiment (issue 31, item 3; item 9's checkpoint minors)."""
import os

import pytest
import torch

from dni_dist.checkpoint import CheckpointError, latest, save
from dni_dist.config import Config
from conftest import SMALL, run_debug

BASE = dict(SMALL, workers=2, checkpoint_every=1)


def _names(d):
    return sorted(n for n in os.listdir(d) if n.startswith("ckpt-"))


def _other_run(d, batches, lr=0.5):
    """Checkpoints of another experiment (another --lr) at ``batches``, as its run wrote them."""
    other = Config(**{**BASE, "lr": lr, "steps": max(batches)}, checkpoint_dir=str(d))
    for b in batches:
        save(str(d), b, {"worker": {}, "config": other.to_dict(), "spec": "task:recall"})


def test_a_fresh_run_refuses_another_experiments_directory(tmp_path, monkeypatch):
    d = tmp_path / "ck"
    _other_run(d, range(90, 101))
    with pytest.raises(CheckpointError) as e:
        run_debug(Config(**BASE, checkpoint_dir=str(d)))
    msg = str(e.value)
    assert "another experiment" in msg and str(d) in msg and "--lr: 0.5 in the checkpoint" in msg
    assert "DNI_DIST_REUSE_CHECKPOINT_DIR=1" in msg and "\n" not in msg
    monkeypatch.setenv("DNI_DIST_REUSE_CHECKPOINT_DIR", "1")  # the override: starts, deletes nothing of theirs
    run_debug(Config(**BASE, checkpoint_dir=str(d), keep_checkpoints=2))
    assert _names(d) == ["ckpt-00000004.pt", "ckpt-00000005.pt"] + [f"ckpt-{b:08d}.pt" for b in range(90, 101)]


def test_a_fresh_run_of_the_same_experiment_is_allowed_and_keeps_its_own_files(tmp_path):
    d = tmp_path / "ck"
    run_debug(Config(**{**BASE, "steps": 5}, checkpoint_dir=str(d), keep_checkpoints=9))
    run_debug(Config(**{**BASE, "steps": 3}, checkpoint_dir=str(d), keep_checkpoints=1))
    # the second run deleted only its own older checkpoints (1, 2), not the first run's 4 and 5
    assert _names(d) == ["ckpt-00000003.pt", "ckpt-00000004.pt", "ckpt-00000005.pt"]


def test_a_stray_file_never_hides_the_newest_or_costs_the_runs_own(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "ckpt-99999999.pt").write_bytes(b"not a checkpoint")
    run_debug(Config(**{**BASE, "steps": 4}, checkpoint_dir=str(d), keep_checkpoints=1))
    assert _names(d) == ["ckpt-00000004.pt", "ckpt-99999999.pt"]
    with pytest.warns(RuntimeWarning, match="ckpt-99999999.pt"):
        got = run_debug(Config(**{**BASE, "steps": 6}, checkpoint_dir=str(d), keep_checkpoints=1, resume=True))
    assert got["batches"] == 2  # resumed from batch 4


def test_resume_skips_a_newer_checkpoint_of_another_experiment(tmp_path):
    d = tmp_path / "ck"
    run_debug(Config(**{**BASE, "steps": 3}, checkpoint_dir=str(d)))
    _other_run(tmp_path / "elsewhere", [50])
    os.replace(tmp_path / "elsewhere" / "ckpt-00000050.pt", d / "ckpt-00000050.pt")
    with pytest.warns(RuntimeWarning, match=r"skipping checkpoint .*ckpt-00000050.pt: --lr: 0.5 in the checkpoint"):
        got = run_debug(Config(**{**BASE, "steps": 5}, checkpoint_dir=str(d), resume=True))
    assert got["batches"] == 2  # from its own batch 3


@pytest.mark.parametrize("drop,match", [("config", "no 'config' entry"), ("worker", "no 'worker' entry"),
                                        ("rng", "no 'rng' entry")])
def test_a_checkpoint_missing_an_entry_is_a_clear_message(tmp_path, drop, match):
    d = tmp_path / "ck"
    run_debug(Config(**{**BASE, "steps": 2}, checkpoint_dir=str(d), keep_checkpoints=1))
    path = d / "ckpt-00000002.pt"
    state = torch.load(path, weights_only=True)
    del state[drop]
    torch.save(state, path)
    if drop == "rng":  # an unreadable checkpoint: skipped with a warning saying why, then nothing is left
        with pytest.warns(RuntimeWarning, match=match), pytest.raises(CheckpointError, match="no checkpoint in"):
            run_debug(Config(**{**BASE, "steps": 4}, checkpoint_dir=str(d), resume=True))
        return
    with pytest.raises(CheckpointError, match=match) as e:
        run_debug(Config(**{**BASE, "steps": 4}, checkpoint_dir=str(d), resume=True))
    assert "\n" not in str(e.value)


def test_the_skip_warning_never_advises_unsafe_loading(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    save(str(tmp_path), 2, {"x": 1})
    with open(tmp_path / "ckpt-00000009.pt", "wb") as f:
        pickle.dump({"batch": 9, "x": Evil()}, f)
    with pytest.warns(RuntimeWarning) as record:
        assert latest(str(tmp_path))[0] == 2
    text = " ".join(str(w.message) for w in record if "ckpt-00000009" in str(w.message))
    assert "ckpt-00000009.pt" in text and "weights_only" not in text and "trusted source" not in text
