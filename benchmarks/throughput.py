"""Engine throughput: tokens/s and peak memory of one process vs K=2 workers (torchrun, Ray) vs a
data-parallel baseline, same model (nn.LSTM H=256, B=32, T=16), one thread per process.

    python benchmarks/throughput.py --steps 40 --out docs/data/throughput.json
Each configuration runs `python -m dni_dist.train` as a user would, and reads its --metrics-json.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

COMMON = ["--hidden", "256", "--batch", "32", "--truncation", "16", "--chunks", "8", "--no-progress",
          "--delay", "5"]


def run(name, cmd, steps, mode):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.json")
        full = cmd + COMMON + ["--steps", str(steps), "--mode", mode, "--metrics-json", path]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(full, capture_output=True, text=True, env=env, timeout=1800)
        if r.returncode:
            raise RuntimeError(f"{name} failed:\n{r.stderr[-2000:]}")
        m = json.load(open(path))
    row = {"name": name, "mode": mode, "command": " ".join(full[:full.index("--metrics-json")]).replace(sys.executable, "python"),
           "tokens_per_s": m["tokens_per_s"], "wall_s": m["wall_s"], "peak_rss_mb": m["peak_rss_mb"],
           "peak_rss_mb_per_rank": m.get("peak_rss_mb_per_rank")}
    print(json.dumps(row), flush=True)
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--modes", default="dni,tbptt")
    p.add_argument("--out", default="docs/data/throughput.json")
    p.add_argument("--skip-ray", action="store_true")
    args = p.parse_args()
    py = [sys.executable, "-m", "dni_dist.train"]
    trun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "dni_dist.train", "--workers", "2"]
    rows = []
    for mode in args.modes.split(","):
        rows.append(run("single process (K=1)", py + ["--workers", "1"], args.steps, mode))
        rows.append(run("pipeline K=2, torchrun", trun, args.steps, mode))
        if not args.skip_ray:
            rows.append(run("pipeline K=2, Ray", py + ["--backend", "ray", "--workers", "2"], args.steps, mode))
        rows.append(run("pipeline K=2 overlap, torchrun", trun + ["--sync", "overlap"], args.steps, mode))
        rows.append(run("data-parallel K=2, torchrun", trun + ["--parallel", "data"], args.steps, mode))
    base = {r["mode"]: r["tokens_per_s"] for r in rows if r["name"].startswith("single")}
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / base[r["mode"]]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"{'configuration':<30} {'mode':<6} {'tokens/s':>9} {'speedup':>8} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['name']:<30} {r['mode']:<6} {r['tokens_per_s']:>9,.0f} {r['speedup']:>7.2f}x {r['peak_rss_mb']:>12.0f}")


if __name__ == "__main__":
    main()
