"""Engine scaling (issue 13): tokens/s and a per-tick time breakdown for K workers, pipeline
(exact, overlap) against data parallelism (the same per-worker batch, and the batch split), the
same model (nn.LSTM H=256, B=32 per worker, T=16, 8 chunks, DNI), one thread a process.

    python benchmarks/scaling.py --ks 1 2 --steps 200 --out runs/scaling
Every clock starts after the model is built (start-up reported apart). Runs one configuration
at a time; run it alone on the machine. Writes scaling.json and scaling.png.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

COMMON = ["--hidden", "256", "--truncation", "16", "--chunks", "8", "--no-progress", "--delay", "5"]
PER_WORKER_BATCH = 32


def run(name, k, args, extra, batch):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.json")
        if k == 1:
            cmd = [sys.executable, "-m", "dni_dist.train", "--workers", "1"]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(k),
                   "-m", "dni_dist.train"]
        full = cmd + COMMON + extra + ["--batch", str(batch), "--steps", str(args.steps), "--mode", args.mode,
                                       "--metrics-json", path]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
        r = subprocess.run(full, capture_output=True, text=True, env=env, timeout=3600)
        if r.returncode:
            raise RuntimeError(f"{name} failed:\n{r.stderr[-2000:]}")
        m = json.load(open(path))
    row = {"name": name, "k": k, "mode": args.mode, "tokens_per_s": m["tokens_per_s"], "wall_s": m["wall_s"],
           "startup_s": m["startup_s"], "batches": m["batches"], "breakdown_s": m["tick_breakdown_s"],
           "breakdown_s_by_rank": m.get("tick_breakdown_s_by_rank", [m["tick_breakdown_s"]]),
           "ticks": len(m["losses"]),
           "command": " ".join(full[:full.index("--metrics-json")]).replace(sys.executable, "python")}
    print(json.dumps(row), flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2], help="worker counts, run in this order")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--mode", default="dni")
    p.add_argument("--out", default="runs/scaling")
    p.add_argument("--replot", default="", help="only redraw the table and plot of this scaling.json")
    args = p.parse_args()
    if args.replot:
        rows = json.load(open(args.replot))
        _report(rows, os.path.join(os.path.dirname(args.replot), "scaling.png"))
        return
    os.makedirs(args.out, exist_ok=True)
    rows = [run("single process", 1, args, [], PER_WORKER_BATCH)]
    for k in [k for k in args.ks if k > 1]:
        for name, extra, batch in [("pipeline exact", ["--sync", "exact"], PER_WORKER_BATCH),
                                   ("pipeline overlap", ["--sync", "overlap"], PER_WORKER_BATCH),
                                   ("data-parallel, same per-worker batch", ["--parallel", "data"],
                                    PER_WORKER_BATCH * k),
                                   ("data-parallel, batch split", ["--parallel", "data"], PER_WORKER_BATCH)]:
            rows.append(run(name, k, args, extra, batch))
            _save(rows, args.out)  # a run cut short by a time limit keeps what it measured
    _save(rows, args.out)
    _report(rows, os.path.join(args.out, "scaling.png"))


def _save(rows, out):
    single = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / single
        t = sum(r["breakdown_s"].values()) or 1.0
        r["breakdown_ms_per_tick"] = {k: 1000 * v / max(r["ticks"], 1) for k, v in r["breakdown_s"].items()}
        r["breakdown_share"] = {k: v / t for k, v in r["breakdown_s"].items()}
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump(rows, f, indent=1)


def _report(rows, png):
    print(f"\n{'configuration':<40} {'K':>2} {'tokens/s':>9} {'x single':>8}   ms per tick: "
          "compute / wait state / all-reduce / other")
    for r in sorted(rows, key=lambda r: r["k"]):
        b = r["breakdown_ms_per_tick"]
        print(f"{r['name']:<40} {r['k']:>2} {r['tokens_per_s']:>9,.0f} {r['speedup']:>7.2f}x   "
              f"{b['compute']:.1f} / {b['wait_state']:.1f} / {b['all_reduce']:.1f} / "
              f"{b['other']:.1f}")
    try:
        _plot(rows, png)
    except ImportError:
        print("matplotlib not installed: no plot")


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({r["name"] for r in rows if r["k"] > 1})
    for name in names:
        pts = [(1, rows[0]["tokens_per_s"])] + sorted((r["k"], r["tokens_per_s"]) for r in rows if r["name"] == name)
        a.plot(*zip(*pts), marker="o", label=name)
    a.set_xlabel("workers K (measured)")
    a.set_ylabel("tokens/s")
    a.set_xticks(sorted({r["k"] for r in rows}))
    a.legend(fontsize=7)
    labels = [f"{r['name'][:22]} K={r['k']}" for r in rows]
    bottom = [0.0] * len(rows)
    for phase in ("compute", "wait_state", "all_reduce", "other"):
        vals = [r["breakdown_ms_per_tick"][phase] for r in rows]
        b.barh(labels, vals, left=bottom, label=phase)
        bottom = [x + y for x, y in zip(bottom, vals)]
    b.set_xlabel("ms per tick (rank 0)")
    b.legend(fontsize=7)
    b.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
