"""What DNI costs on a GPU (issue 28, goal 5): ms per update and host-device synchronisations per
update, TBPTT against DNI (its defaults, which read the gate once per update, and
``gate_check_every=0``, which never reads it: the same learning bit for bit, every chunk paying the
prediction and the ``J^T g`` pass), through the seed API and the engine, alone and with four jobs
sharing the GPU. Rows go to stdout; the whole run takes at most about 3 minutes.

Seed API: a user's char-LM loop (Shakespeare characters, embedding 64, nn.LSTM 1024, batch 128,
T=5, Adam 1e-3, clip 1, state carried across windows, ``synth.step()`` every window). Its update
is timed after a warm-up past the synthesizer gate's warm-up (``gate_warmup`` updates), with
``torch.cuda.synchronize()`` around the measured window; synchronisations are counted with
``torch.cuda.set_sync_debug_mode("warn")`` over the same window. Shared: four processes run the
same loop for a fixed time; the row sums their updates.

Engine: ``dni_dist.fit`` in one process (debug backend, one worker), recall task, LSTM 1024,
T=16, 8 chunks, batch 64: ms per tick (one update) and synchronisations per tick over the run.

    python benchmarks/gpu_cost.py            # on a machine with a GPU
    python benchmarks/gpu_cost.py --smoke    # a tiny CPU run of every row (host reads counted instead)
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
import warnings

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from dni_dist import Synthesizer  # noqa: E402
from dni_dist import targets as tg  # noqa: E402
from dni_dist.post import Post  # noqa: E402

FULL = dict(hidden=1024, emb=64, batch=128, T=5, measure=200, shared_s=30.0,
            engine=dict(hidden=1024, truncation=16, chunks=8, batch=64, steps=30))
SMOKE = dict(hidden=32, emb=8, batch=4, T=5, measure=20, shared_s=3.0,
             engine=dict(hidden=16, truncation=4, chunks=4, batch=4, steps=4))
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
# the rows: TBPTT; DNI with its defaults (the gate read once per update); DNI never reading the gate (the same
# learning bit for bit, every chunk pays the prediction and the J^T g pass)
MODES = {"tbptt": {}, "dni": {}, "dni_noread": {"gate_check_every": 0}}


@contextlib.contextmanager
def counting_syncs(device: str):
    """Yields a two-item list: the synchronisations (CUDA) or Python-level tensor reads (CPU) so far, and
    the reads of a post (``dni_dist/post.py``) that found its copy unfinished (waited for the device)."""
    got = [0, 0]
    if device == "cuda":
        waits = Post.waits
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield got
            finally:
                torch.cuda.set_sync_debug_mode(0)
                got[0] = sum("synchroniz" in str(w.message) for w in caught)
                got[1] = Post.waits - waits
        return
    orig = {n: getattr(torch.Tensor, n) for n in READS}

    def wrap(f):
        def read(self, *a, **k):  # only reads asked for inside dni_dist (the user's Adam reads its step counters)
            stack = traceback.extract_stack()
            if stack[-2].filename.endswith("/post.py"):  # a post's host buffer: no read of the device
                return f(self, *a, **k)
            if any("dni_dist" in fr.filename and "benchmarks" not in fr.filename for fr in stack):
                got[0] += 1
            return f(self, *a, **k)
        return read
    for n in READS:
        setattr(torch.Tensor, n, wrap(orig[n]))
    try:
        yield got
    finally:
        for n in READS:
            setattr(torch.Tensor, n, orig[n])


def seed_loop(mode: str, device: str, p: dict, seconds: float | None = None) -> dict:
    """The user's loop; ``seconds``: run that long after the warm-up (shared rows) instead of timing."""
    from dni_dist.tasks import CharCorpus, load_corpus
    torch.manual_seed(0)
    corpus = CharCorpus(load_corpus("shakespeare"))
    H, T, B = p["hidden"], p["T"], p["batch"]
    emb = nn.Embedding(corpus.vocab, p["emb"]).to(device)
    rnn, head = nn.LSTM(p["emb"], H, batch_first=True).to(device), nn.Linear(H, corpus.vocab).to(device)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    synth = Synthesizer(**MODES[mode]) if mode != "tbptt" else None
    warm = 20 + (synth.gate_warmup if synth else 0)
    total = warm + p["measure"] if seconds is None else 10 ** 9
    x = corpus.streams("train", B).to(device)
    state = None
    c, t0, updates = 0, None, 0

    def update(c):
        nonlocal state
        s = (c * T) % (x.shape[1] - T - 1)
        out, state = rnn(emb(x[:, s:s + T]), state)
        loss = nn.functional.cross_entropy(head(out).transpose(1, 2), x[:, s + 1:s + 1 + T])
        state = synth.backward_synthetic(state, loss) if synth else tg.detach(state)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if synth:
            synth.step()

    for c in range(warm):
        update(c)
    sync(device)
    if seconds is not None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            update(warm + updates)
            updates += 1
        sync(device)
        return {"updates": updates, "seconds": time.perf_counter() - t0}
    with counting_syncs(device) as syncs:
        t0 = time.perf_counter()
        for c in range(warm, total):
            update(c)
        sync(device)
        ms = 1000 * (time.perf_counter() - t0) / p["measure"]
    return {"ms_per_update": ms, "syncs_per_update": syncs[0] / p["measure"], "waits_per_update": syncs[1] / p["measure"],
            "gate": synth.stats.gate if synth else None}


def engine_run(mode: str, device: str, p: dict) -> dict:
    from dni_dist.config import Config
    from dni_dist.fit import resolve_spec
    from dni_dist.runners import debug
    e = p["engine"]
    cfg = Config(mode="tbptt" if mode == "tbptt" else "dni", device=device, workers=1, task="recall", progress=False,
                 delay=3, synth_options=json.dumps(MODES.get(mode, {})), **e)
    with counting_syncs(device) as syncs:
        t0 = time.perf_counter()
        _, m = debug.run(cfg, resolve_spec(cfg))
        sync(device)
        wall = time.perf_counter() - t0
    ticks = e["steps"] * e["chunks"]
    return {"ms_per_update": 1000 * wall / ticks, "syncs_per_update": syncs[0] / ticks,
            "waits_per_update": syncs[1] / ticks, "tokens_per_s": m["tokens_per_s"]}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def shared(mode: str, device: str, smoke: bool, jobs: int, seconds: float) -> dict:
    """``jobs`` processes run the seed loop at once for ``seconds`` each; their updates summed."""
    cmd = [sys.executable, os.path.abspath(__file__), "--job", mode, "--seconds", str(seconds)] + (["--smoke"] * smoke)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    got = [json.loads(pr.communicate(timeout=seconds + 300)[0].strip().splitlines()[-1]) for pr in procs]
    return {"updates": sum(g["updates"] for g in got), "seconds": max(g["seconds"] for g in got)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks every row runs")
    ap.add_argument("--jobs", type=int, default=4, help="processes sharing the GPU in the shared rows")
    ap.add_argument("--job", choices=tuple(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = "cpu" if args.smoke else "cuda"
    p = SMOKE if args.smoke else FULL
    if args.job:  # one of the shared jobs
        print(json.dumps(seed_loop(args.job, device, p, seconds=args.seconds)), flush=True)
        return 0
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_cost.py: no CUDA GPU is visible here (torch.cuda.is_available() is False); nothing measured. "
              "Run it on a machine with a GPU, or with --smoke for a tiny CPU run of every row.", flush=True)
        return 0
    what = "host reads inside dni_dist (CPU, Python-level)" if args.smoke else "host-device syncs"
    name = "CPU smoke" if args.smoke else torch.cuda.get_device_name()
    print(f"# gpu_cost.py on {name}, torch {torch.__version__}; {what} per update", flush=True)
    print("row | mode | ms/update | syncs/update | notes (posts that waited: reads of a post, dni_dist/post.py, "
          "that found the device behind)", flush=True)
    for mode in MODES:
        r = seed_loop(mode, device, p)
        gate = "" if r["gate"] is None else f"gate {r['gate']:.3f}"
        print(f"seed API alone (LSTM {p['hidden']}, B {p['batch']}, T {p['T']}) | {mode} | {r['ms_per_update']:.2f} | "
              f"{r['syncs_per_update']:.2f} | {gate}", flush=True)
    for mode in MODES:
        r = engine_run(mode, device, p)
        e = p["engine"]
        print(f"engine K=1 (LSTM {e['hidden']}, B {e['batch']}, T {e['truncation']}) | {mode} | "
              f"{r['ms_per_update']:.2f} | {r['syncs_per_update']:.2f} | {r['tokens_per_s']:,.0f} tokens/s "
              f"(whole run, warm-up included), posts that waited {r['waits_per_update']:.2f}/update", flush=True)
    for mode in MODES:
        r = shared(mode, device, args.smoke, args.jobs, p["shared_s"])
        per = 1000 * r["seconds"] / max(r["updates"], 1)
        print(f"seed API, {args.jobs} jobs sharing the device | {mode} | {per:.2f} (wall per update, all jobs) | - | "
              f"{r['updates']} updates in {r['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
