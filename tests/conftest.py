"""Shared test helpers (imported by the test modules as ``from conftest import ...``) and settings.

Every test runs with one thread; distributed tests spawn gloo processes bounded by timeouts, and
compare against the single-process run of the same config (debug mode is the reference).
"""
import json
import os
import socket

import torch
import torch.multiprocessing as mp
from torch import nn

from dni_dist import Synthesizer
from dni_dist.fit import resolve_spec
from dni_dist.runners import debug

import user_spec

torch.set_num_threads(1)

NOW = {"gate_warmup": 0, "gate_check_every": 1}  # the gate open from the start and read every chunk:
# the default warm-up (100 updates) and read (every 16 chunks) would keep it shut in these few batches
SMALL = dict(steps=5, chunks=4, batch=4, hidden=8, progress=False, delay=3, truncation=3, synth_lr=1e-2,
             synth_options=json.dumps(NOW))


USER = dict(steps=5, chunks=user_spec.CHUNKS, truncation=user_spec.T, progress=False)


def synth_opts(**options) -> str:
    """``synth_options`` for a small test run: ``options`` with the gate open from the start."""
    return json.dumps({**NOW, **options})


def run_debug(cfg, spec=None):
    return debug.run(cfg, spec or resolve_spec(cfg))[1]


def seed_api_losses(cfg, synth_kw=None):
    """The reference for a K=1 engine run: the README's three lines over ``cfg``'s spec, one optimizer
    step per chunk (the engine's Adam), DNI with ``Synthesizer(**synth_kw)`` or TBPTT when None.
    Returns every chunk's loss, the model and the synthesizer (None in TBPTT)."""
    from dni_dist import targets as tg
    from dni_dist.optim import adam
    spec = resolve_spec(cfg)
    torch.manual_seed(cfg.seed)
    model = spec.model()
    opt = adam(model.parameters(), cfg.lr)  # the engine's (fused and foreach Adam round apart on AVX-512)
    synth = Synthesizer.for_rnn(model.rnn, lr=cfg.synth_lr, **synth_kw) if synth_kw is not None else None
    losses = []
    for b in range(cfg.steps):
        x, y, m = spec.batch(b)
        state = None
        for c in range(cfg.chunks):
            sl = slice(c * cfg.truncation, (c + 1) * cfg.truncation)
            out, state = model(x[:, sl], state)
            loss = spec.loss(out, y[:, sl], m[:, sl])
            if synth is not None:
                state = synth.backward_synthetic(state, loss, last=c == cfg.chunks - 1, model=model, inputs=x[:, sl])
            else:
                state = tg.detach(state)
            losses.append(float(loss.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if synth is not None:
            synth.step()
    return losses, model, synth


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spawn_ranks(target, world, wait_s=100):
    """Run ``target(rank, world, port, queue)`` in ``world`` spawned processes; each puts one
    answer on the queue: the answers, sorted (by rank where the answers begin with it)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, q)) for r in range(world)]
    for p in procs:
        p.start()
    got = sorted(q.get(timeout=wait_s) for _ in range(world))
    for p in procs:
        p.join(20)
    return got


def _spawned_rank(rank, world, port, cfg, spec, out_dir):
    import torch.distributed as dist

    from dni_dist.runners.distributed import run_rank
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, m = run_rank(cfg, spec or resolve_spec(cfg), rank, world)
    finally:
        dist.destroy_process_group()
    torch.save({"losses": m["losses"], "model": model.state_dict(), "skipped": m["skipped_chunks"],
                "affinity": _thread_cores() if cfg.pin_cores else []}, os.path.join(out_dir, f"rank{rank}.pt"))


def _thread_cores() -> list:
    """The cores every live thread of this process may run on (a thread may end while we look)."""
    out = []
    for t in os.listdir("/proc/self/task"):
        try:
            out.append(sorted(os.sched_getaffinity(int(t))))
        except (ProcessLookupError, FileNotFoundError):
            pass
    return out


def run_spawned(cfg, out_dir, spec=None):
    """K gloo processes (torch.multiprocessing spawn), bounded by a timeout; rank results."""
    ctx = mp.start_processes(_spawned_rank, args=(cfg.workers, free_port(), cfg, spec, str(out_dir)),
                             nprocs=cfg.workers, join=False, start_method="spawn")
    while not ctx.join(timeout=120):
        pass
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(cfg.workers)]


def make_rnn(kind, layers=1, h=6):
    torch.manual_seed(0)
    return {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](3, h, num_layers=layers)


def random_synth(rnn, **kw):
    synth = Synthesizer.for_rnn(rnn, lr=0.0, normalize=False, gate=False, **kw)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in synth.parameters():
            p.normal_(0, 0.3)
    return synth
