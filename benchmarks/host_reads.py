"""Where a chunk of the seed API reads tensor values back to Python (``.item()``, ``.tolist()``,
``float()``, ``bool()``): on a GPU each read of a GPU tensor is a host-device synchronisation,
which stalls the launch queue of a launch-bound step. Counted here on the CPU (where they cost
little), per chunk, by the innermost line of dni_dist that asked (the user's own reads, e.g. a
per-tensor Adam's step counters, are left out); since issue 28 the only read of a DNI update is the gate's, once
every ``gate_check_every`` injections (``Synthesizer.tick``); tests/test_host_reads.py holds it there. A read
of a post (``dni_dist/post.py``: host memory a device value was copied to a tick earlier, without waiting; the
engine's divergence window) would be marked ``[posted]``.

    python benchmarks/host_reads.py
"""
import collections
import sys
import traceback

import torch

from cost_per_update import run
from dni_dist import Synthesizer

WARMUP = 20  # the chunks cost_per_update.run trains before its clock starts, plus the gate's warm-up (counted here too)

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


def count(mode: str, chunks: int = 200):
    """Reads per chunk by site, over ``cost_per_update.run``'s char-LM loop (H=128, T=5)."""
    sites = collections.Counter()
    orig = {n: getattr(torch.Tensor, n) for n in READS}

    def wrap(name):
        f = orig[name]

        def read(self, *a, **k):
            stack = traceback.extract_stack()[:-1]
            frames = [fr for fr in stack if "dni_dist" in fr.filename and not fr.filename.endswith("/post.py")]
            if frames:  # the user's own reads (their optimizer's step counters) are theirs
                fr = frames[-1]
                how = "posted" if stack[-1].filename.endswith("/post.py") else name
                sites[f"{fr.filename.split('/')[-1]}:{fr.lineno} {fr.name}: {fr.line} [{how}]"] += 1
            return f(self, *a, **k)
        return read

    for n in READS:
        setattr(torch.Tensor, n, wrap(n))
    try:
        run(mode, 128, 5, chunks)
    finally:
        for n in READS:
            setattr(torch.Tensor, n, orig[n])
    total = chunks + WARMUP + (Synthesizer().gate_warmup if mode == "dni" else 0)  # as run() counts its warm-up
    return sum(sites.values()) / total, {k: v / total for k, v in sites.most_common()}


def main():
    for mode in ("tbptt", "dni"):
        total, sites = count(mode)
        print(f"{mode}: {total:.2f} host reads per chunk inside dni_dist")
        for k, v in sites.items():
            print(f"  {v:5.2f}  {k}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
