"""Where two char-LM runs part: validation and training bits/char of run B minus run A over training.

Both JSONs come from ``benchmarks/grid/char_lm.py --eval-every N`` (or ``research/placebo.py``) with the
same corpus, seed and N. Prints B − A at every validation score, its mean/min/max after a burn-in,
and the training bits/char difference per block of windows (the example keeps every 10th window's
training score).

    python research/compare_curves.py runs/valid_curve/ptb_tbptt_s2.json runs/valid_curve/ptb_dni_s2.json
"""
import argparse
import json
import statistics


def compare(a: dict, b: dict, burn_in: int = 1000, block: int = 200) -> dict:
    va, vb = dict(a["valid_curve"]), dict(b["valid_curve"])
    steps = sorted(set(va) & set(vb))
    if not steps:
        raise SystemExit("compare_curves.py: the runs share no validation score (run both with the same --eval-every)")
    valid = [(s, vb[s] - va[s]) for s in steps]
    late = [d for s, d in valid if s > burn_in] or [d for _, d in valid]
    ta, tb = [r[1] for r in a["curve"]], [r[1] for r in b["curve"]]
    per = max(block // 10, 1)  # the curve keeps every 10th window
    train = [statistics.mean(tb[i:i + per]) - statistics.mean(ta[i:i + per])
             for i in range(0, min(len(ta), len(tb)) - per + 1, per)]
    return {"valid": valid, "valid_late_mean": statistics.mean(late), "valid_late_min": min(late),
            "valid_late_max": max(late), "final": b["valid_bpc"] - a["valid_bpc"], "train_per_block": train}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="baseline run's JSON (e.g. --mode tbptt)")
    p.add_argument("b", help="the run compared with it")
    p.add_argument("--burn-in", type=int, default=1000, help="windows before the late statistics start")
    p.add_argument("--block", type=int, default=200, help="windows per training-score block")
    args = p.parse_args(argv)
    r = compare(json.load(open(args.a)), json.load(open(args.b)), args.burn_in, args.block)
    print("B - A, validation bits/char at each score:", " ".join(f"{s}:{d:+.3f}" for s, d in r["valid"]))
    print(f"after window {args.burn_in}: mean {r['valid_late_mean']:+.4f}, min {r['valid_late_min']:+.3f}, "
          f"max {r['valid_late_max']:+.3f}; final {r['final']:+.4f}")
    print(f"training bits/char per {args.block} windows:", " ".join(f"{d:+.4f}" for d in r["train_per_block"]))
    return r


if __name__ == "__main__":
    main()
