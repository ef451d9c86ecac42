"""A char-LM panel as one table: every arm against TBPTT on the same corpus and seed.

Reads ``DIR/{corpus}_{arm}_s{seed}.json`` (``benchmarks/grid/char_lm.py`` or ``research/placebo.py``
runs with ``--eval-every``; the arm ``tbptt`` is the baseline) and prints, per corpus and seed,
TBPTT's final validation bits/char and each arm's final difference, then each arm's difference
over the run after the burn-in (mean, min … max, from :mod:`compare_curves`), and per arm the
mean and worst final difference.

    python research/panel.py runs/r11
"""
import argparse
import collections
import json
import pathlib
import re
import statistics

from compare_curves import compare


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--burn-in", type=int, default=1000)
    args = p.parse_args(argv)
    runs = {}
    for f in sorted(pathlib.Path(args.dir).glob("*.json")):
        m = re.fullmatch(r"(.+)_([a-z0-9]+)_s(\d+)\.json", f.name)
        r = json.loads(f.read_text())
        if m and "valid_bpc" in r:
            runs[(m[1], int(m[3]), m[2])] = r
    arms = sorted({a for (_, _, a) in runs if a != "tbptt"})
    print("| corpus, seed | TBPTT | " + " | ".join(f"{a} − TBPTT (final; over the run: mean, min … max)"
                                                  for a in arms) + " |")
    print("|---|---|" + "---|" * len(arms))
    finals = collections.defaultdict(list)
    for corpus, seed in sorted({(c, s) for (c, s, _) in runs}):
        base = runs.get((corpus, seed, "tbptt"))
        if base is None:
            continue
        cells = []
        for a in arms:
            r = runs.get((corpus, seed, a))
            if r is None:
                cells.append("—")
                continue
            c = compare(base, r, args.burn_in) if base.get("valid_curve") and r.get("valid_curve") else None
            finals[a].append(c["final"] if c else r["valid_bpc"] - base["valid_bpc"])
            over = (f"; {c['valid_late_mean']:+.3f}, {c['valid_late_min']:+.3f} … {c['valid_late_max']:+.3f}"
                    if c else "")
            cells.append(f"{finals[a][-1]:+.3f}{over}")
        print(f"| {corpus} {seed} | {base['valid_bpc']:.3f} | " + " | ".join(cells) + " |")
    for a in arms:
        if finals[a]:
            print(f"{a}: {len(finals[a])} runs, mean {statistics.mean(finals[a]):+.4f}, "
                  f"worst {max(finals[a]):+.3f}, beyond +0.01: {sum(d > 0.01 for d in finals[a])}")


if __name__ == "__main__":
    main()
