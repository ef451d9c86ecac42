"""Long-run stability (issue 12): does DNI keep a task it has solved? Delayed recall D=5 inside
chunks of T=16 (plain truncation solves it), 400 batches, through the engine's command line,
several seeds and hidden sizes; reports the final loss and the worst 10-batch window of the
second half, and writes one JSON per run plus a summary.

    python benchmarks/stability.py --out runs/stability --seeds 0 1 2 3 4 --hidden 128 256 320 --lanes 2
    python benchmarks/stability.py --out runs/stability_nogate --synth-options '{"gate": false}'  # the old behaviour
Solved: final loss per chunk < 0.01 and no window above 0.1 in the second half.
"""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(seed, hidden, args, out):
    return [sys.executable, "-m", "dni_dist.train", "--workers", "1", "--batch", "32", "--hidden", str(hidden),
            "--truncation", "16", "--chunks", "8", "--steps", str(args.steps), "--delay", "5", "--mode", args.mode,
            "--seed", str(seed), "--no-progress", "--metrics-json", out,
            *(["--synth-options", args.synth_options] if args.synth_options else [])]


def score(losses, chunks=8, window_batches=10):
    w = chunks * window_batches
    windows = [sum(losses[i:i + w]) / w for i in range(0, len(losses) - w + 1, w)]
    return {"final": windows[-1], "worst_second_half": max(windows[len(windows) // 2:]), "windows": windows}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/stability")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--hidden", type=int, nargs="+", default=[256])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--mode", default="dni")
    p.add_argument("--synth-options", default="")
    p.add_argument("--lanes", type=int, default=2)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    jobs = []
    for h in args.hidden:
        for s in args.seeds:
            out = os.path.join(args.out, f"h{h}_s{s}.json")
            if not os.path.exists(out):
                jobs.append(command(s, h, args, out))
    with ThreadPoolExecutor(args.lanes) as ex:
        for r in ex.map(lambda c: subprocess.run(c, capture_output=True, text=True, cwd=ROOT), jobs):
            if r.returncode:
                print(r.stderr[-2000:], file=sys.stderr)
    rows = []
    print(f"{'hidden':>6} {'seed':>4} {'final':>9} {'worst 2nd half':>14}  solved")
    for h in args.hidden:
        for s in args.seeds:
            path = os.path.join(args.out, f"h{h}_s{s}.json")
            if not os.path.exists(path):
                continue
            sc = score(json.load(open(path))["losses"])
            ok = sc["final"] < 0.01 and sc["worst_second_half"] <= 0.1
            rows.append({"hidden": h, "seed": s, **sc, "solved": ok})
            print(f"{h:>6} {s:>4} {sc['final']:>9.2e} {sc['worst_second_half']:>14.2e}  {'yes' if ok else 'NO'}")
    print(f"solved {sum(r['solved'] for r in rows)}/{len(rows)}")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"command": " ".join(command("S", "H", args, "OUT")).replace(sys.executable, "python"),
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
