"""Engine scaling (issue 13): tokens/s and a per-tick time breakdown for K workers, pipeline
(exact, overlap) against data parallelism (the same per-worker batch, and the batch split), the
same model (nn.LSTM H=256, B=32 per worker, T=16, 8 chunks, DNI), one thread a process.

    python benchmarks/scaling.py --ks 1 2 --steps 200 --repeats 3 --out runs/scaling
Every clock starts after the model is built (start-up reported apart). Runs one configuration
at a time; run it alone on the machine. "K independent single processes" runs K copies of the
single process at once (tokens/s summed): no K-worker mode can beat what the machine gives them.
Workers sum gradients the default way (``--reduce auto``: shared memory on one host); the row
"pipeline exact, backend all-reduce" sums them with gloo's all-reduce instead.
"JTg" is the share of rank 0's boundaries whose discounted target took the extra J^T g pass: the
synthesizer's gate decides it, so configurations can differ in work per tick (overlap's stale
synthesizer keeps the gate shut on this task). Writes scaling.json (one row per configuration,
its median run) and scaling.png.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

COMMON = ["--hidden", "256", "--truncation", "16", "--chunks", "8", "--no-progress", "--delay", "5"]
PER_WORKER_BATCH = 32
CONFIGS = ("ceiling", "exact", "exact_backend", "exact_pinned", "overlap", "dp_same", "dp_split")


def run(name, k, args, extra, batch, copies=1):
    """One configuration: K workers under torchrun, or (K=1) the single process, ``copies`` of
    it at once with their tokens/s summed (K independent processes: what the machine allows)."""
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, f"m{i}.json") for i in range(copies)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
        if k == 1:
            cmd = [sys.executable, "-m", "dni_dist.train", "--workers", "1"]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(k),
                   "-m", "dni_dist.train"]
        full = cmd + COMMON + extra + ["--batch", str(batch), "--steps", str(args.steps), "--mode", args.mode]
        if args.synth_options:
            full += ["--synth-options", args.synth_options]
        procs = [subprocess.Popen(full + ["--metrics-json", paths[i]], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=env) for i in range(copies)]
        for p in procs:
            _, err = p.communicate(timeout=3600)
            if p.returncode:
                raise RuntimeError(f"{name} failed:\n{err[-2000:]}")
        ms = [json.load(open(paths[i])) for i in range(copies)]
    m = ms[0]
    row = {"name": name, "k": k * copies, "mode": args.mode, "tokens_per_s": sum(x["tokens_per_s"] for x in ms),
           "wall_s": m["wall_s"], "startup_s": m["startup_s"], "batches": m["batches"],
           "breakdown_s": m["tick_breakdown_s"],
           "breakdown_s_by_rank": m.get("tick_breakdown_s_by_rank", [m["tick_breakdown_s"]]),
           "ticks": len(m["losses"]),
           # work done: the share of rank 0's boundaries whose discounted target took the J^T g pass
           # (it is skipped while the synthesizer's gate is shut, e.g. with a stale synthesizer)
           "jtg_share": (m["synth"]["jtg_passes"] / max(m["synth"]["targets"], 1)) if m.get("synth") else None,
           "command": (f"{copies} x " if copies > 1 else "") + " ".join(full).replace(sys.executable, "python")}
    print(json.dumps(row), flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2], help="worker counts, run in this order")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=1,
                   help="run every configuration this many times, round robin (the medians are reported): "
                        "a shared machine's speed drifts by several percent between runs")
    p.add_argument("--mode", default="dni")
    p.add_argument("--synth-options", default="", help="Synthesizer options as JSON for every run, "
                   "e.g. '{\"train_every\": 4}'")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                   help="which K>1 configurations to run (the single process always runs first)")
    p.add_argument("--out", default="runs/scaling")
    p.add_argument("--replot", default="", help="only redraw the table and plot of this scaling.json")
    args = p.parse_args()
    if args.replot:  # scaling.json -> scaling.png, scaling_16core.json -> scaling_16core.png
        rows = json.load(open(args.replot))
        png = os.path.splitext(args.replot)[0] + ".png"
        if isinstance(rows, dict):  # several calls (e.g. scaling_16core.json): speedups, each over its own call
            rows = _merge_calls(rows)
            _report(rows, png, y="speedup")
        else:
            _report(rows, png)
        return
    os.makedirs(args.out, exist_ok=True)
    configs = [("single process", 1, [], PER_WORKER_BATCH, 1)]
    for k in [k for k in args.ks if k > 1]:
        every = {"ceiling": (f"{k} independent single processes (ceiling)", 1, [], PER_WORKER_BATCH, k),
                 "exact": ("pipeline exact", k, ["--sync", "exact"], PER_WORKER_BATCH, 1),
                 "exact_backend": ("pipeline exact, backend all-reduce", k,
                                   ["--sync", "exact", "--reduce", "backend"], PER_WORKER_BATCH, 1),
                 "exact_pinned": ("pipeline exact, pinned to cores", k, ["--sync", "exact", "--pin-cores"],
                                  PER_WORKER_BATCH, 1),
                 "overlap": ("pipeline overlap", k, ["--sync", "overlap"], PER_WORKER_BATCH, 1),
                 "dp_same": ("data-parallel, same per-worker batch", k, ["--parallel", "data"],
                             PER_WORKER_BATCH * k, 1),
                 "dp_split": ("data-parallel, batch split", k, ["--parallel", "data"], PER_WORKER_BATCH, 1)}
        configs += [every[c] for c in args.configs]
    runs = []
    for rep in range(args.repeats):
        for name, k, extra, batch, copies in configs:
            runs.append({**run(name, k, args, extra, batch, copies), "repeat": rep})
            rows = _save(runs, args.out)  # a run cut short by a time limit keeps what it measured
    _report(rows, os.path.join(args.out, "scaling.png"))


def _save(runs, out):
    """One row per configuration: the run with the median tokens/s (its breakdown), every run's
    tokens/s beside it, and the speedup over the single process's median."""
    rows = []
    for key in dict.fromkeys((r["name"], r["k"]) for r in runs):
        mine = sorted((r for r in runs if (r["name"], r["k"]) == key), key=lambda r: r["tokens_per_s"])
        row = dict(mine[(len(mine) - 1) // 2])
        row["tokens_per_s_runs"] = [r["tokens_per_s"] for r in runs if (r["name"], r["k"]) == key]
        rows.append(row)
    single = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / single
        t = sum(r["breakdown_s"].values()) or 1.0
        r["breakdown_ms_per_tick"] = {k: 1000 * v / max(r["ticks"], 1) for k, v in r["breakdown_s"].items()}
        r["breakdown_share"] = {k: v / t for k, v in r["breakdown_s"].items()}
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return rows


def _merge_calls(calls: dict) -> list:
    """Rows of a file that holds several calls (``{"machine", "call_1": rows, ...}``): the last
    call's rows, then each earlier call's single process and its rows at a K the later calls did
    not run, each named with its call; a row's speedup is over the single process of its own call."""
    keys = sorted(k for k in calls if k.startswith("call"))
    rows, seen = [], set()
    for key in reversed(keys):
        for r in calls[key]:
            if r["k"] > 1 and (r["name"], r["k"]) in seen:  # every call's single process stays: its base
                continue
            seen.add((r["name"], r["k"]))
            rows.append({**r, "call": key.replace("_", " ")})
    return rows


def _report(rows, png, y="tokens_per_s"):
    print(f"\n{'configuration':<40} {'K':>2} {'tokens/s':>9} {'x single':>8}  {'JTg':>4}   ms per tick: "
          "compute / wait state / all-reduce / other")
    for r in sorted(rows, key=lambda r: r["k"]):
        b = r["breakdown_ms_per_tick"]
        jtg = "-" if r.get("jtg_share") is None else f"{r['jtg_share']:.0%}"
        print(f"{r['name']:<40} {r['k']:>2} {r['tokens_per_s']:>9,.0f} {r['speedup']:>7.2f}x  {jtg:>4}   "
              f"{b['compute']:.1f} / {b['wait_state']:.1f} / {b['all_reduce']:.1f} / "
              f"{b['other']:.1f}")
    try:
        _plot(rows, png, y)
    except ImportError:
        print("matplotlib not installed: no plot")


def _plot(rows, path, y="tokens_per_s"):
    """Left: ``y`` (tokens/s, or ``speedup`` over the single process) against K, from zero.
    Right: rank 0's ms per tick by phase, one bar per row, labelled in full (with its call, when
    the rows come from several)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 0.45 * len(rows) + 2.5))
    names = sorted({r["name"] for r in rows if r["k"] > 1})
    for name in names:
        pts = [(1, rows[0][y])] + sorted((r["k"], r[y]) for r in rows if r["name"] == name)
        a.plot(*zip(*pts), marker="o", label=name)
    a.set_xlabel("workers K (measured)")
    a.set_ylabel({"tokens_per_s": "tokens/s", "speedup": "x the single process (of the same call)"}[y])
    a.set_xticks(sorted({r["k"] for r in rows}))
    a.set_ylim(bottom=0)  # ratios read true only from zero
    a.legend(fontsize=7)
    labels = [f"{r['name']}, K={r['k']}".replace(" (ceiling)", "\n(ceiling)").replace(", same per-worker batch",
                                                                                   "\n(same per-worker batch)")
              + (f" ({r['call']})" if r.get("call") else "") for r in rows]
    bottom = [0.0] * len(rows)
    for phase in ("compute", "wait_state", "all_reduce", "other"):
        vals = [r["breakdown_ms_per_tick"][phase] for r in rows]
        b.barh(labels, vals, left=bottom, label=phase)
        bottom = [x + y for x, y in zip(bottom, vals)]
    b.set_xlabel("ms per tick (rank 0)")
    b.legend(fontsize=7, loc="lower right")
    b.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
