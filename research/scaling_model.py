"""Model the engine's throughput for K = 2..64 workers from what benchmarks/throughput.py measured.

    python research/scaling_model.py docs/data/throughput.json [--hop-ms 0.2]
Per tick every worker runs one chunk (t_c, from the single-process rate) and the gradients are
summed by a ring all-reduce, t_ar(K) = 2(K-1)/K * S/beta + 2(K-1) * hop. The K=2 exact run gives
S/beta (its whole per-tick overhead is charged to it, an upper bound); hop is one gloo message
latency (~0.2 ms measured on this machine). Exact: tick = t_c + t_ar(K). Overlap: tick =
max(t_c, t_ar(K)) + r, r the residual measured with --sync overlap at K=2.
"""
import argparse
import json


def main():
    p = argparse.ArgumentParser()
    p.add_argument("throughput_json")
    p.add_argument("--hop-ms", type=float, default=0.2)
    p.add_argument("--mode", default="dni")
    p.add_argument("--plot", default="", help="also draw the speedup vs K to this PNG")
    args = p.parse_args()
    rows = {r["name"]: r for r in json.load(open(args.throughput_json)) if r["mode"] == args.mode}
    cfg_tokens = 32 * 16  # B * T per chunk
    t_c = cfg_tokens / rows["single process (K=1)"]["tokens_per_s"] * 1e3
    tick2 = 2 * cfg_tokens / rows["pipeline K=2, torchrun"]["tokens_per_s"] * 1e3
    tick2o = 2 * cfg_tokens / rows["pipeline K=2 overlap, torchrun"]["tokens_per_s"] * 1e3
    s_over_beta = (tick2 - t_c) - 2 * args.hop_ms
    resid = tick2o - max(t_c, s_over_beta + 2 * args.hop_ms)
    print(f"measured: t_c = {t_c:.1f} ms, K=2 exact tick = {tick2:.1f} ms, overlap tick = {tick2o:.1f} ms "
          f"-> S/beta = {s_over_beta:.1f} ms, overlap residual = {resid:.1f} ms")
    print("| K | all-reduce ms (model) | exact: speedup | overlap: speedup |")
    print("|---|---|---|---|")
    ks, ex, ov = (1, 2, 4, 8, 16, 32, 64), [], []
    for k in ks:
        t_ar = 2 * (k - 1) / k * s_over_beta + 2 * (k - 1) * args.hop_ms
        ex.append(k * t_c / (t_c + t_ar))
        ov.append(k * t_c / (max(t_c, t_ar) + (resid if k > 1 else 0.0)))
        if k > 1:
            print(f"| {k} | {t_ar:.1f} | {ex[-1]:.1f}x | {ov[-1]:.1f}x |")
    if args.plot:
        plot(args.plot, ks, ex, ov, rows)


def plot(path, ks, ex, ov, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = rows["single process (K=1)"]["tokens_per_s"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(ks, ks, ":", color="gray", label="ideal (K x one process)")
    # the model's predictions: dashed, hollow markers; measurements: filled stars
    ax.plot(ks, ex, "o--", mfc="none", color="tab:blue", label="MODEL (not measured), exact")
    ax.plot(ks, ov, "s--", mfc="none", color="tab:green", label="MODEL (not measured), overlap")
    measured = [("pipeline K=2, torchrun", "tab:blue", "measured exact (torchrun)"),
                ("pipeline K=2, Ray", "tab:purple", "measured exact (Ray)"),
                ("pipeline K=2 overlap, torchrun", "tab:green", "measured overlap"),
                ("data-parallel K=2, torchrun", "tab:red", "measured data-parallel")]
    for name, color, label in measured:
        if name in rows:
            ax.plot([2], [rows[name]["tokens_per_s"] / base], "*", ms=12, color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("workers K")
    ax.set_ylabel("speedup over one process")
    ax.set_title("a model of speedup vs K (dashed); K=2 measured (stars)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
