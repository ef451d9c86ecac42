"""``gate_check_every=0``: the host never reads the gate; every chunk is predicted, injected and
takes its ``J^T g`` pass, scaled by the gate on the device (zero while it is shut). Zeros injected
change nothing, so the learning is bit for bit that of the default (the gate read every chunk),
through a warm-up, a shut gate and an open one, in the seed API and in the engine."""
import json

import pytest
import torch

from dni_dist import Synthesizer
from dni_dist.config import Config

from conftest import run_debug, seed_api_losses

SMALL = dict(steps=12, chunks=4, batch=4, hidden=8, progress=False, delay=3, truncation=3, synth_lr=1e-2)


def without_clock(state):
    return {k: v for k, v in state.items() if k != "gate_clock"}  # the host's view: never read with 0


@pytest.mark.parametrize("lookahead", [1, 2])
def test_the_seed_api_learns_the_same_bits_without_reading_the_gate(lookahead):
    cfg = Config(mode="dni", workers=1, **SMALL)
    runs = {}
    for m in (1, 0):
        kw = {"gate_warmup": 5, "gate_check_every": m, "lookahead": lookahead}
        losses, model, synth = seed_api_losses(cfg, kw)
        runs[m] = (losses, model.state_dict(), without_clock(synth.state_dict()), synth.stats)
    (l1, m1, s1, st1), (l0, m0, s0, st0) = runs[1], runs[0]
    assert st1.updates > 5 and st1.gate > 0  # the warm-up ended and the gate opened
    assert l0 == l1
    assert all(torch.equal(m0[k], m1[k]) for k in m1) and all(torch.equal(s0[k], s1[k]) for k in s1)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_engine_learns_the_same_bits_without_reading_the_gate(workers):
    got = {}
    for m in (1, 0):
        cfg = Config(mode="dni", workers=workers, synth_options=json.dumps({"gate_warmup": 3, "gate_check_every": m}),
                     **SMALL)
        got[m] = run_debug(cfg)
    assert got[1]["synth"]["jtg_passes"] > 0 and got[1]["synth"]["gate"] > 0
    assert got[0]["losses"] == got[1]["losses"]
    assert got[0]["synth"]["jtg_passes"] > got[1]["synth"]["jtg_passes"]  # it paid for the pass while shut


def test_never_reading_refuses_fewer_trained_cuts_while_shut():
    with pytest.raises(ValueError, match="gate_check_every=0, shut_train_every=2"):
        Synthesizer(gate_check_every=0, shut_train_every=2)
    with pytest.raises(ValueError, match="gate_check_every"):
        Synthesizer(gate_check_every=-1)
