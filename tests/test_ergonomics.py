"""What a trainer user expects (issue 14): file-friendly logs, live CSV, TensorBoard, TOML
configs, torchrun without --workers (one node or two), a seed call that sizes itself."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dni_dist import Synthesizer
from dni_dist import targets as tg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--chunks", "4", "--batch", "4", "--hidden", "8", "--truncation", "3", "--delay", "3"]


def _train(args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "dni_dist.train", *SMALL, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, **kw)


@pytest.mark.slow
def test_off_a_terminal_the_log_is_small_and_periodic(tmp_path):
    r = _train(["--steps", "400", "--workers", "2", "--log-every", "0.5"])
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("[dni K=2] batch")]
    assert len(lines) >= 2, r.stderr
    assert "loss" in lines[0] and "tok/s" in lines[0] and "skill" in lines[0] and "gate" in lines[0]
    assert lines[-1].startswith("[dni K=2] batch 400/400")
    assert len(r.stderr) < 20_000  # no progress-bar redraws in a file


@pytest.mark.slow
def test_live_csv_survives_a_killed_run(tmp_path):
    csv = tmp_path / "m.csv"
    p = subprocess.Popen([sys.executable, "-m", "dni_dist.train", *SMALL, "--steps", "100000", "--no-progress",
                          "--metrics-csv", str(csv)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if csv.exists() and len(csv.read_text().splitlines()) > 20:
                break
            time.sleep(0.2)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    rows = csv.read_text().splitlines()
    assert rows[0] == "step,batch,loss,tokens_per_s,skill,gate"
    assert len(rows) > 20
    step, batch, loss, tok, skill, gate = rows[6].split(",")
    assert int(step) == 5 and int(batch) >= 1 and float(loss) > 0 and float(tok) >= 0 and 0 <= float(gate) <= 1


@pytest.mark.slow
def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    r = _train(["--steps", "20", "--no-progress", "--tensorboard", str(tmp_path / "tb")])
    assert r.returncode == 0, r.stderr[-2000:]
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/tokens_per_s", "synth/skill", "synth/gate", "synth/target_rms"} <= tags
    # one x-axis for train and eval: batches completed (one point per batch here)
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 21))


@pytest.mark.slow
def test_toml_config_with_a_command_line_override(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('steps = 3\nseed = 6\nworkers = 2\nmode = "tbptt"\n')
    r = _train(["--config", str(toml), "--steps", "2", "--no-progress", "--metrics-json", str(tmp_path / "m.json")])
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.load(open(tmp_path / "m.json"))["config"]
    assert (cfg["steps"], cfg["seed"], cfg["workers"], cfg["mode"]) == (2, 6, 2, "tbptt")
    assert r.stderr.startswith("config: ")  # the resolved config, printed once
    bad = tmp_path / "bad.toml"
    bad.write_text("stepz = 3\n")
    r = _train(["--config", str(bad)])
    assert r.returncode == 2 and "unknown key 'stepz'" in r.stderr


def test_help_shows_defaults_and_choices():
    r = subprocess.run([sys.executable, "-m", "dni_dist.train", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    assert "(default: 1200)" in flat and "{dni,tbptt}" in flat


def _torchrun(extra, tmp_path, name, nodes=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", *(nodes or ["--standalone", "--nproc-per-node", "2"]),
           "-m", "dni_dist.train", *SMALL, "--steps", "3", "--no-progress", "--metrics-json",
           str(tmp_path / f"{name}.json"), *extra]
    return cmd


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_torchrun_needs_no_workers_flag_and_names_a_mismatch(tmp_path):
    r = subprocess.run(_torchrun([], tmp_path, "a"), capture_output=True, text=True, timeout=200, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(tmp_path / "a.json"))["config"]["workers"] == 2
    r = subprocess.run(_torchrun(["--workers", "4"], tmp_path, "b"), capture_output=True, text=True, timeout=200,
                       cwd=ROOT)
    assert r.returncode != 0
    assert "torchrun started 2 processes" in r.stderr and "--workers is 4" in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_node_torchrun_on_loopback_matches_debug(tmp_path):
    """Two torchrun invocations as two nodes (c10d rendezvous on 127.0.0.1), as on two machines."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    nodes = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
             f"127.0.0.1:{port}", "--rdzv-id", "dni-test"]
    procs = [subprocess.Popen(_torchrun([], tmp_path, f"n{i}", nodes + ["--node-rank", str(i)]), cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=200) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    got = json.load(open(tmp_path / "n0.json")) if (tmp_path / "n0.json").exists() else \
        json.load(open(tmp_path / "n1.json"))
    ref = _train(["--steps", "3", "--workers", "2", "--no-progress", "--metrics-json", str(tmp_path / "d.json")])
    assert ref.returncode == 0
    assert got["losses"] == json.load(open(tmp_path / "d.json"))["losses"]


@pytest.mark.parametrize("cell,layers", [(nn.LSTM, 1), (nn.LSTM, 2), (nn.GRU, 1), (nn.GRU, 2)])
def test_the_seed_call_sizes_itself_from_the_first_state(cell, layers):
    rnn = cell(3, 5, num_layers=layers)
    is_lstm = cell is nn.LSTM
    for synth in (Synthesizer(size=5, is_lstm=is_lstm), Synthesizer()):
        h = None
        for chunk in torch.randn(6, 2, 3).split(2):
            out, h = rnn(chunk, h)
            loss = out.pow(2).sum()
            h = synth.backward_synthetic(h, loss)
            loss.backward()
        synth.step()
        assert synth.num_layers == layers and synth.is_lstm == is_lstm and synth.size == 5
        assert synth.stats.targets == 2
        assert tg.as_tuple(synth(h))[0].shape == (layers, 2, 5)


def test_curriculum_records_when_each_level_was_passed(monkeypatch, tmp_path):
    """The benchmark examples' non-saturating score: the batch at which every level was passed."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks" / "grid"))
    import copy_task
    out = tmp_path / "copy.json"
    r = copy_task.main(["--mode", "dni", "--truncation", "3", "--hidden", "32", "--batch", "16", "--max-steps", "400", "--lr", "0.01",
                        "--window", "5", "--log-every", "1000", "--device", "cpu", "--json", str(out)])
    assert r["passed_at"], "copy N=1 at T=3 is passed within 400 batches"
    scores, steps = zip(*r["passed_at"])
    assert list(scores) == list(range(1, len(scores) + 1)) and scores[-1] == r["max_len_solved"]
    assert list(steps) == sorted(steps) and steps[-1] <= r["steps"] == 400
    saved = json.loads(out.read_text())
    assert saved["passed_at"] == r["passed_at"]
    assert saved["lr"] == 0.01 and saved["synth_kw"] == {}  # what the run was, for the device script's summary


def test_char_lm_scores_validation_along_the_way_without_changing_the_run(monkeypatch, tmp_path):
    """--eval-every adds validation scores during training (issue 10: when a gap between DNI and
    TBPTT forms) and changes nothing else; DNI runs also log the gate and the correlation behind it."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks" / "grid"))
    import char_lm
    text = tmp_path / "text.txt"
    words = "the quick brown fox jumps over the lazy dog and then the dog sleeps while the fox runs".split()
    gen = torch.Generator().manual_seed(0)
    text.write_text(" ".join(words[int(i)] for i in torch.randint(len(words), (6000,), generator=gen)))
    base = ["--mode", "dni", "--truncation", "3", "--hidden", "16", "--batch", "4", "--max-steps", "6",
            "--corpus", str(text), "--eval-chars", "2000", "--log-every", "1000", "--device", "cpu"]
    plain = char_lm.main(base)
    scored = char_lm.main(base + ["--eval-every", "2"])
    assert [s for s, _ in scored["valid_curve"]] == [2, 4, 6] and plain["valid_curve"] == []
    assert scored["valid_curve"][-1][1] == scored["valid_bpc"] == plain["valid_bpc"]
    assert all(len(row) == 4 for row in scored["curve"])  # time, bpc, gate, correlation
