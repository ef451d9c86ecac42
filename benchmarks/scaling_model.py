"""Model the engine's throughput for K = 2..64 workers from what benchmarks/throughput.py measured.

    python benchmarks/scaling_model.py docs/throughput.json [--hop-ms 0.2]
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
    for k in (2, 4, 8, 16, 32, 64):
        t_ar = 2 * (k - 1) / k * s_over_beta + 2 * (k - 1) * args.hop_ms
        exact = k * t_c / (t_c + t_ar)
        over = k * t_c / (max(t_c, t_ar) + resid)
        print(f"| {k} | {t_ar:.1f} | {exact:.1f}x | {over:.1f}x |")


if __name__ == "__main__":
    main()
