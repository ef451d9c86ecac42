"""Full disks and a small /dev/shm (issue 31, items 1 and 5).

Real full disks: a small tmpfs mounted in a private mount namespace (``unshare -m``, root only;
skipped elsewhere). The same failures by a fault hook (:data:`dni_dist.files.fault`) run anywhere."""
import errno
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

import dni_dist
from dni_dist import files
from dni_dist.config import Config
from dni_dist.fit import resolve_spec
from conftest import SMALL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAN_MOUNT = shutil.which("unshare") is not None and hasattr(os, "geteuid") and os.geteuid() == 0
needs_mount = pytest.mark.skipif(not CAN_MOUNT, reason="a private tmpfs needs root and unshare")
TRAIN = [sys.executable, "-m", "dni_dist.train", "--workers", "2", "--chunks", "4", "--batch", "4",
         "--truncation", "3", "--delay", "3", "--no-progress"]


def _on_small_disk(tmp_path, size: str, script: str, timeout=240):
    """Run ``script`` (sh) with a ``size`` tmpfs at $DISK; $DISK's files are copied to
    ``tmp_path/after`` before the namespace (and the tmpfs) goes away."""
    disk, after = tmp_path / "disk", tmp_path / "after"
    disk.mkdir()
    after.mkdir()
    full = (f"mount -t tmpfs -o size={size} tmpfs {disk} || exit 99\nexport DISK={disk}\n{script}\nrc=$?\n"
            f"cp -a {disk}/. {after}/\nexit $rc\n")
    r = subprocess.run(["unshare", "-m", "sh", "-c", full], capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    if r.returncode == 99:
        pytest.skip("cannot mount a tmpfs in a private namespace here")
    return r


def _cmd(args):
    return " ".join(shlex.quote(a) for a in TRAIN + args)


def _full(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


# ------------------------------------------------------------------ --save on a full disk (item 1)
@pytest.mark.slow
@needs_mount
def test_save_on_a_full_disk_keeps_the_old_model_and_writes_the_metrics(tmp_path):
    disk = tmp_path / "disk"
    r = _on_small_disk(tmp_path, "16k", f"""
python -c 'import os, torch; torch.save({{"w": torch.ones(2)}}, os.environ["DISK"] + "/model.pt")'
{_cmd(["--steps", "3", "--hidden", "64", "--save", str(disk / "model.pt"), "--metrics-json", str(tmp_path / "m.json")])}
""")
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "cannot write --save" in last and "model.pt" in last and "ENOSPC" in last and "free of" in last
    assert torch.equal(torch.load(tmp_path / "after" / "model.pt", weights_only=True)["w"], torch.ones(2))
    assert os.listdir(tmp_path / "after") == ["model.pt"]  # no half-written temporary file
    m = json.load(open(tmp_path / "m.json"))  # a healthy disk: written all the same
    assert len(m["losses"]) > 0 and "--save" in m["error"]


# ------------------------------------------------------------------ --metrics-csv on a full disk (item 5)
def test_a_full_csv_disk_is_a_warning_and_training_goes_on(tmp_path, monkeypatch):
    calls = {"n": 0}

    def full_after_a_while(path):
        calls["n"] += 1
        if path.endswith("m.csv") and calls["n"] > 5:
            _full(path)

    monkeypatch.setattr(files, "fault", full_after_a_while)
    cfg = Config(**{**SMALL, "steps": 6}, workers=2, metrics_csv=str(tmp_path / "m.csv"))
    with pytest.warns(RuntimeWarning, match=r"cannot write --metrics-csv .*m\.csv.*ENOSPC.*training goes on"):
        m = dni_dist.fit(resolve_spec(cfg), cfg).metrics
    assert m["batches"] == 6 and len(m["losses"]) > 0
    monkeypatch.setattr(files, "fault", None)


@pytest.mark.slow
@needs_mount
def test_cli_full_csv_disk_finishes_with_a_warning(tmp_path):
    r = _on_small_disk(tmp_path, "8k", f"""
dd if=/dev/zero of=$DISK/filler bs=1k count=4 2>/dev/null
{_cmd(["--workers", "1", "--steps", "60", "--metrics-csv", str(tmp_path / "disk" / "m.csv"), "--metrics-json",
       str(tmp_path / "m.json")])}
""")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cannot write --metrics-csv" in r.stderr and "ENOSPC" in r.stderr and "Traceback" not in r.stderr
    m = json.load(open(tmp_path / "m.json"))
    assert m["batches"] == 60 and len(m["losses"]) == 240  # every row kept for the JSON


# ------------------------------------------------------------------ a full checkpoint directory (item 5)
def test_a_full_checkpoint_dir_is_one_line_naming_path_and_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "fault", lambda p: _full(p) if "ckpt-" in p else None)
    cfg = Config(**{**SMALL, "steps": 4}, workers=2, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2)
    with pytest.raises(files.WriteError) as e:
        dni_dist.fit(resolve_spec(cfg), cfg)
    msg = str(e.value)
    assert "\n" not in msg and "ckpt-00000002.pt" in msg and "ENOSPC" in msg and "free of" in msg


@pytest.mark.slow
@needs_mount
def test_cli_full_checkpoint_dir(tmp_path):
    r = _on_small_disk(tmp_path, "32k", _cmd(["--steps", "4", "--hidden", "48", "--checkpoint-dir",
                                               str(tmp_path / "disk" / "ck"), "--checkpoint-every", "2"]))
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("dni_dist: error: cannot write checkpoint") and "ckpt-00000002.pt" in last
    assert "No space left on device (ENOSPC)" in last and "free of 32.0 KiB" in last
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------ a small /dev/shm (item 5)
def test_mailbox_without_room_falls_back_in_order(tmp_path, monkeypatch):
    from dni_dist.transport.mailbox import Mailbox, UseBackend
    real = os.posix_fallocate
    limit = {"bytes": 1 << 30}

    def small_shm(fd, offset, n):
        if n > limit["bytes"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, offset, n)

    monkeypatch.setattr(os, "posix_fallocate", small_shm)
    for first in (True, False):  # no room for the first ring, or for a larger one later
        name = os.path.join("/dev/shm", f"dni_dist_test_{os.getpid()}_{first}")
        send, take = Mailbox(name, 3, 1.0, lambda: True, "worker 1"), Mailbox(name, 3, 1.0, lambda: True, "worker 0")
        limit["bytes"] = 0 if first else 1 << 30
        if not first:
            send.post(torch.arange(3), torch.ones(4))
            limit["bytes"] = 4096
        with pytest.raises(UseBackend, match="No space left"):
            send.post(torch.arange(3), torch.ones(100_000))
        if not first:  # what was sent before arrives first
            h, raw = take.take()
            assert torch.equal(raw.view(torch.float32), torch.ones(4))
        with pytest.raises(UseBackend):
            take.take()
        send.close()
        take.close()
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(os.path.basename(name))]


@needs_mount
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_on_a_small_dev_shm_falls_back_with_warnings(tmp_path):
    script = f"""
mount -t tmpfs -o size=600k tmpfs /dev/shm || exit 99
{sys.executable} -m torch.distributed.run --standalone --nproc-per-node 2 -m dni_dist.train --workers 2 \\
  --chunks 4 --truncation 3 --delay 3 --steps 4 --batch 32 --hidden 200 --no-progress \\
  --metrics-json {tmp_path}/m.json --timeout-s 60
"""
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=280,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    if r.returncode == 99:
        pytest.skip("cannot mount a tmpfs in a private namespace here")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "summing gradients with the backend's all-reduce instead" in r.stderr
    assert "sending to worker 1 with the backend instead" in r.stderr
    assert len(json.load(open(tmp_path / "m.json"))["losses"]) > 0
