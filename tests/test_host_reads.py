"""No host reads in steady state (issue 28, goal 1): after the gate's warm-up, a seed-API update and
an engine tick read no tensor value back to Python inside dni_dist, except the gate's scheduled read
(once every ``gate_check_every`` injections). The engine's divergence window reaches the host as a
post (``dni_dist/post.py``): copied to host memory one tick before the host reads it, so on a GPU
the copy has finished when it is read and nothing waits.

On a GPU each read of a device tensor is a host-device synchronisation. The CPU has none, so what is
counted here is the Python-level read: ``Tensor.item``, ``tolist``, ``__bool__``, ``__float__``,
``__int__``, ``__index__``, ``numpy`` called from a frame inside dni_dist, with a post's host buffer
told apart from everything else (``benchmarks/gpu_cost.py`` counts real synchronisations with
``torch.cuda.set_sync_debug_mode`` where a GPU is lent).
"""
import collections
import dataclasses
import contextlib
import json
import sys
import traceback

import pytest
import torch
from torch import nn

from dni_dist import SeqModel, Synthesizer
from dni_dist.config import Config
from dni_dist.fit import resolve_spec
from dni_dist.runners import debug

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")
SCHEDULED = "tick"  # the one device read allowed: the gate, every gate_check_every chunks (ticks)
POSTED = "[posted]"  # a read of a post: host memory a device value was copied to a tick before


def is_post(tensor) -> bool:
    """Whether ``tensor`` is the host buffer of a Post being taken (found on the call stack)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith("/post.py"):
            owner = frame.f_locals.get("self")
            return owner is not None and tensor is owner._host
        frame = frame.f_back
    return False


@contextlib.contextmanager
def counting():
    """Yields a Counter of reads by ``file:line function [how]`` of the innermost dni_dist frame,
    counted while ``sites.on`` is True."""
    sites = collections.Counter()
    sites.on = False
    orig = {n: getattr(torch.Tensor, n) for n in READS}

    def wrap(name):
        f = orig[name]

        def read(self, *a, **k):
            if sites.on:
                frames = [fr for fr in traceback.extract_stack()[:-1]
                          if "dni_dist" in fr.filename and "tests" not in fr.filename
                          and not fr.filename.endswith("/post.py")]  # a post's read is named by its caller
                if frames:
                    fr = frames[-1]
                    where = POSTED if is_post(self) else f"[{name}]"
                    sites[f"{fr.filename.split('/')[-1]}:{fr.lineno} {fr.name} {where}"] += 1
            return f(self, *a, **k)
        return read

    for n in READS:
        setattr(torch.Tensor, n, wrap(n))
    try:
        yield sites
    finally:
        for n in READS:
            setattr(torch.Tensor, n, orig[n])


def device_reads(sites) -> dict:
    return {k: v for k, v in sites.items() if not k.endswith(POSTED)}


def unscheduled(sites) -> dict:
    return {k: v for k, v in device_reads(sites).items() if f" {SCHEDULED} " not in k}


def posts(sites) -> int:
    return sum(v for k, v in sites.items() if k.endswith(POSTED))


@pytest.mark.parametrize("check", [1, 8, 0])  # the default, a read every 8 chunks, never
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_seed_api_update_reads_nothing_after_the_warmup(kind, check):
    """Nothing but the gate's read, every ``check`` chunks (with 0, none: a GPU update is free of syncs)."""
    torch.manual_seed(0)
    T, H = 4, 8
    rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(3, H, batch_first=True)
    head = nn.Linear(H, 1)
    opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-2)
    options = {} if check == 1 else {"gate_check_every": check}
    synth = Synthesizer.for_rnn(rnn, gate_warmup=5, **options)
    x = torch.randn(4, 40 * T, 3)
    y = torch.roll(x[..., :1], 2, 1)
    state = None
    with counting() as sites:
        for c in range(40):
            sites.on = c >= 8  # past the warm-up (5 updates of evidence) and the first reads
            sl = slice(c * T, (c + 1) * T)
            out, state = rnn(x[:, sl], state)
            loss = (head(out) - y[:, sl]).pow(2).mean()
            state = synth.backward_synthetic(state, loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if c % 4 == 3:
                synth.step()
    assert unscheduled(sites) == {} and posts(sites) == 0, sites
    # calls 8..39: the gate read at each (check=1), at 8, 16, 24, 32 (8), never (0)
    assert sum(sites.values()) == (32 // check if check else 0)
    assert synth.stats.updates >= 30 and synth.stats.gate > 0  # it trained, and the gate opened


@pytest.mark.parametrize("check", [4, 0])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_an_engine_tick_reads_nothing_after_the_warmup(kind, workers, check, monkeypatch):
    from dni_dist.engine import loop
    cfg = Config(task="recall", workers=workers, steps=10, chunks=4, batch=4, hidden=8, truncation=3, delay=3,
                 progress=False, synth_lr=1e-2, divergence_window=4,
                 synth_options=json.dumps({"gate_warmup": 3, "gate_check_every": check}))
    spec = resolve_spec(cfg)
    if kind == "gru":
        spec = dataclasses.replace(spec, model=lambda: SeqModel(1, cfg.hidden, 1, cell="gru"))
    ticks = []
    original = loop.run_schedule

    def run_segment(worker, *a, **k):
        for _ in original(worker, *a, **k):
            if worker.position == 0:
                ticks.append(None)
                sites.on = len(ticks) > 12  # past the gate's warm-up
            yield

    monkeypatch.setattr(loop, "run_schedule", run_segment)  # the runners import it when they run
    finish = debug.finish

    def finished(*a, **k):
        sites.on = False  # the end-of-run metrics read the statistics once, as a user would
        return finish(*a, **k)

    monkeypatch.setattr(debug, "finish", finished)
    with counting() as sites:
        _, m = debug.run(cfg, spec)
    assert m["synth"]["updates"] > 10
    measured = len(ticks) - 12
    # one scheduled device read, the gate's (every gate_check_every ticks of a worker); the divergence window
    # (every min(16, divergence_window) ticks) as a post; nothing else
    assert unscheduled(sites) == {}, sites
    assert sum(device_reads(sites).values()) <= (workers * (measured // 4 + 1) if check else 0)
    divergence = sum(v for k, v in sites.items() if " _check_divergence " in k and k.endswith(POSTED))
    assert 0 < divergence == posts(sites) <= workers * (measured // 4 + 1)
