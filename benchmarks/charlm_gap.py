"""How much of the gap between TBPTT(T) and TBPTT(2T) does DNI at T close on character-level LM?

Equal data: every arm reads the same windows of 2T characters per update (batch B contiguous
streams of the training split, the LSTM state carried from window to window, never reset until
an epoch wraps) and makes one Adam step per window (clip 1). The arms differ only in what happens
at the cuts inside and at the end of a window:

    tbptt      gradient cut every T (two chunks per window)
    tbptt2     gradient cut every 2T (one chunk per window): the ceiling DNI aims at
    dni        cut every T, synthetic gradient at every cut: dni_dist.Synthesizer, library defaults
    dni_mlp    the same with hidden_layers=1
    dni_next   research.levers.NextInputSynthesizer: also sees the next chunk's T input ids
    dni_next_mlp   dni_next with hidden_layers=1
    dni_la2    Synthesizer(lookahead=2) (two chunks of true gradient per target)
    artbp      no synthesizer: the middle cut truncates with probability 1/2, else passes the
               gradient scaled by 2 (ARTBP-like, Tallec & Ollivier 2017): unbiased for tbptt2

The model is what a user writes: nn.Embedding + nn.LSTM + nn.Linear, loss = cross-entropy
summed over the window's characters / (B * 2T). DNI arms use the public seed API:
``hn = synth.backward_synthetic(hn, loss)``, ``loss.backward()`` per chunk, ``synth.step()`` after
the window. Score: validation bits/char (first --eval-chars characters, 8 streams, stateful).
Share of the gap closed = (tbptt - arm) / (tbptt - tbptt2).

    python benchmarks/charlm_gap.py --corpora shakespeare,ptb --seeds 0,1,2 --out runs/gap   # runs + table
    python benchmarks/charlm_gap.py --table runs/gap --save docs/data/gap.json               # table only
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # research/ (run from anywhere)

from dni_dist import Synthesizer  # noqa: E402
from dni_dist import targets as tg  # noqa: E402
from dni_dist.tasks import CharCorpus, load_corpus  # noqa: E402
from dni_dist.tasks.specs import bits_per_char  # noqa: E402

ARMS = ("tbptt", "tbptt2", "dni", "dni_mlp", "dni_next", "dni_next_mlp", "dni_la2", "artbp")


class CharLM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        out, state = self.lstm(self.emb(x), state)
        return self.head(out), state


def corpus_path(name: str) -> str:
    """Built-in names, or a text file; 'python'/'rust_book'/'man' look for runs/<file>.txt."""
    files = {"python": "runs/python_stdlib.txt", "rust_book": "runs/rust_book.txt", "man": "runs/man1.txt",
             "cargo_book": "runs/cargo_book.txt"}
    if name in files:
        if not os.path.isfile(files[name]):
            raise SystemExit(f"{files[name]} missing: make it with benchmarks/python_corpus.py or doc_corpora.py")
        return files[name]
    return name


def make_synth(arm: str, model: CharLM, vocab: int, T: int, extra: dict):
    if arm in ("tbptt", "tbptt2", "artbp"):
        return None
    kw = dict(extra)
    if arm.endswith("_mlp"):
        kw.setdefault("hidden_layers", 1)
    if arm == "dni_la2":
        kw["lookahead"] = 2
    if arm.startswith("dni_next"):
        from research.levers import NextInputSynthesizer
        return NextInputSynthesizer.for_rnn(model.lstm, vocab=vocab, horizon=T, **kw)
    return Synthesizer.for_rnn(model.lstm, **kw)


def run(corpus_name: str, arm: str, seed: int, args, corpus_cache: dict) -> dict:
    torch.set_num_threads(1)
    if corpus_name not in corpus_cache:
        corpus_cache[corpus_name] = CharCorpus(load_corpus(corpus_path(corpus_name)))
    corpus = corpus_cache[corpus_name]
    T, B, W = args.truncation, args.batch, 2 * args.truncation
    torch.manual_seed(seed)
    model = CharLM(corpus.vocab, args.embed, args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    synth = make_synth(arm, model, corpus.vocab, T, json.loads(args.synth_kw))
    gen = torch.Generator().manual_seed(10_000 + seed)  # artbp's coin flips
    streams = corpus.streams("train", B)
    windows = (streams.shape[1] - 1 - T) // W  # room for the next chunk's inputs after the last window
    span = W if arm == "tbptt2" else T
    state, t0, train_tail, gates = None, time.process_time(), [], []
    for u in range(args.updates):
        w = u % windows
        if w == 0 and u > 0:
            state = None  # next epoch: the streams start again
        base = w * W
        total = 0.0
        losses = []
        for c in range(W // span):
            a = base + c * span
            x, y = streams[:, a:a + span], streams[:, a + 1:a + 1 + span]
            logits, h = model(x, state)
            loss = F.cross_entropy(logits.reshape(-1, corpus.vocab), y.reshape(-1), reduction="sum") / (B * W)
            total += float(loss.detach())
            if synth is not None:
                if arm.startswith("dni_next"):
                    state = synth.backward_synthetic(h, loss, next_inputs=streams[:, a + span:a + 2 * span])
                else:  # model/inputs are read only with lookahead=2
                    state = synth.backward_synthetic(h, loss, model=model, inputs=x)
                loss.backward()
            elif arm == "artbp" and c == 0:
                state, _ = artbp_cut(h, 0.5, gen)
                losses.append(loss)
            else:
                state = tg.detach(h)
                losses.append(loss)
        if losses:
            sum(losses).backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if synth is not None:
            synth.step()
            if u % 50 == 0:
                gates.append([u, round(synth.stats.gate, 4), round(synth.stats.correlation, 4),
                              round(synth.stats.skill, 4)])
        if u >= args.updates * 0.9:
            train_tail.append(total / math.log(2))
    cpu_s = time.process_time() - t0
    valid = bits_per_char(model, corpus.data["valid"][: args.eval_chars], streams=8)
    return {"corpus": corpus_name, "arm": arm, "seed": seed, "valid_bpc": valid,
            "train_bpc_tail": statistics.fmean(train_tail), "updates": args.updates, "truncation": T,
            "batch": B, "hidden": args.hidden, "embed": args.embed, "lr": args.lr, "synth_kw": args.synth_kw,
            "cpu_s": round(cpu_s, 1), "gates": gates, "torch": torch.__version__}


def artbp_cut(state, p, gen):
    from research.levers import artbp_cut as cut
    return cut(state, p, gen)


def load(dirs: list[str]) -> list[dict]:
    rows = []
    for d in dirs:
        for f in sorted(pathlib.Path(d).glob("*.json")):
            rows.append(json.loads(f.read_text()))
    return rows


def table(rows: list[dict], arms=None) -> tuple[str, dict]:
    """Markdown table: per corpus x seed the bits/char of every arm and each arm's share of the gap."""
    by = {}
    for r in rows:
        by.setdefault((r["corpus"], r["seed"]), {})[r["arm"]] = r["valid_bpc"]
    present = [a for a in ARMS if any(a in v for v in by.values())] if arms is None else arms
    others = [a for a in present if a not in ("tbptt", "tbptt2")]
    head = "| corpus | seed | " + " | ".join(present) + " | " + " | ".join(f"{a} share" for a in others) + " |"
    lines = [head, "|" + "---|" * (2 + len(present) + len(others))]
    summary = {a: {"diffs": [], "gaps": [], "shares": []} for a in others}
    for (corpus, seed), v in sorted(by.items()):
        cells = [f"{v[a]:.4f}" if a in v else "-" for a in present]
        shares = []
        for a in others:
            if a in v and "tbptt" in v and "tbptt2" in v:
                gap = v["tbptt"] - v["tbptt2"]
                share = (v["tbptt"] - v[a]) / gap if gap else float("nan")
                shares.append(f"{share:+.2f}")
                summary[a]["diffs"].append(v[a] - v["tbptt"])
                summary[a]["gaps"].append(gap)
                summary[a]["shares"].append(share)
            else:
                shares.append("-")
        lines.append(f"| {corpus} | {seed} | " + " | ".join(cells) + " | " + " | ".join(shares) + " |")
    gaps = [v["tbptt"] - v["tbptt2"] for v in by.values() if "tbptt" in v and "tbptt2" in v]
    if gaps:  # the gap there is to close, whether or not a DNI arm ran
        lines.append(f"\nmean gap (tbptt - tbptt2) over {len(gaps)} runs: {statistics.fmean(gaps):+.4f} bits/char "
                     f"(min {min(gaps):+.4f}, max {max(gaps):+.4f}); a share is defined only when it is >= 0.01")
    lines.append("")
    lines.append("| arm | runs | mean (arm - tbptt) | worst (arm - tbptt) | mean gap (tbptt - tbptt2) | "
                 "share of mean gap | mean of per-run shares | runs > tbptt + 0.01 |")
    lines.append("|---|---|---|---|---|---|---|---|")
    out = {}
    for a, s in summary.items():
        if not s["diffs"]:
            continue
        md, mg = statistics.fmean(s["diffs"]), statistics.fmean(s["gaps"])
        out[a] = {"runs": len(s["diffs"]), "mean_diff": md, "worst_diff": max(s["diffs"]), "mean_gap": mg,
                  "share": -md / mg if mg else float("nan"), "mean_share": statistics.fmean(s["shares"]),
                  "beyond_0.01": sum(d > 0.01 for d in s["diffs"])}
        o = out[a]
        share = f"{o['share']:+.2f}" if mg >= 0.01 else f"n/a (gap {mg:+.4f} < 0.01)"
        lines.append(f"| {a} | {o['runs']} | {o['mean_diff']:+.4f} | {o['worst_diff']:+.4f} | {mg:+.4f} | "
                     f"{share} | {o['mean_share']:+.2f} | {o['beyond_0.01']} |")
    return "\n".join(lines), out


def synth_stats(rows: list[dict]) -> str:
    """Per synthesizer arm: its gate, the correlation of its prediction with its target and its skill
    (fraction of target variance explained, out of sample), averaged over runs, late in training."""
    lines = ["| arm | runs | gate (last 500 updates) | correlation | skill |", "|---|---|---|---|---|"]
    by = {}
    for r in rows:
        if r.get("gates"):
            late = [g for g in r["gates"] if g[0] >= r["updates"] - 500]
            by.setdefault(r["arm"], []).append([statistics.fmean(g[i] for g in late) for i in (1, 2, 3)])
    for arm in ARMS:
        if arm in by:
            m = [statistics.fmean(v[i] for v in by[arm]) for i in range(3)]
            lines.append(f"| {arm} | {len(by[arm])} | {m[0]:.3f} | {m[1]:+.3f} | {m[2]:+.3f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpora", default="shakespeare", help="comma list: shakespeare, ptb, python, rust_book, "
                   "man, cargo_book or a text file")
    p.add_argument("--seeds", default="0", help="comma list")
    p.add_argument("--arms", default="tbptt,tbptt2,dni", help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--truncation", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--updates", type=int, default=2500)
    p.add_argument("--eval-chars", type=int, default=50_000)
    p.add_argument("--synth-kw", default="{}", help="extra options for every synthesizer arm (JSON)")
    p.add_argument("--out", default="runs/charlm_gap", help="one JSON per run here (existing runs are skipped)")
    p.add_argument("--table", nargs="*", default=None, help="only print the table of these run folders")
    p.add_argument("--save", default="", help="write the summary (rows + per-arm numbers) as JSON here")
    args = p.parse_args(argv)
    if args.table is not None:
        rows = load(args.table or [args.out])
    else:
        arms = args.arms.split(",")
        bad = [a for a in arms if a not in ARMS]
        if bad:
            raise SystemExit(f"--arms: unknown {bad}; expected some of {', '.join(ARMS)}")
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cache = {}
        for corpus in args.corpora.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                for arm in arms:
                    f = out / f"{pathlib.Path(corpus).stem}_{arm}_{seed}.json"
                    if f.exists():
                        continue
                    r = run(corpus, arm, seed, args, cache)
                    r["corpus"] = pathlib.Path(corpus).stem
                    f.write_text(json.dumps(r))
                    print(f"{r['corpus']} {arm} seed {seed}: valid {r['valid_bpc']:.4f} bits/char, "
                          f"{r['cpu_s']} s CPU (contended)", flush=True)
        rows = load([args.out])
    text, summary = table(rows)
    print(text)
    print(synth_stats(rows))
    if args.save:
        keep = [{k: r[k] for k in ("corpus", "arm", "seed", "valid_bpc", "train_bpc_tail", "updates", "cpu_s")}
                for r in rows]
        pathlib.Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.save).write_text(json.dumps({"runs": keep, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
