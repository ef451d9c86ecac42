"""Before paying for DNI: can a synthesizer predict the gradient truncation throws away, on your data?

    python -m dni_dist.diagnose --spec package.module:spec --truncation 5
    python -m dni_dist.diagnose --task recall            # built-ins: recall, copy, repeat_copy, charlm

    result = dni_dist.diagnose.diagnose(spec, truncation=5)
    print(result.table()); print(result.verdict)

What it does: trains the spec's model briefly with plain truncated BPTT (one optimizer step per
chunk), freezes it, and at many cuts collects the state ``h`` at the cut, the inputs of the next
chunk, and the *true* gradient of the next chunk's loss with respect to ``h`` (what a one-step
synthesizer regresses on, docs/math.md) and of all later losses of the sequence. It fits ridge
regression (closed form) on 80% of the batches and reports the R^2 on the other 20% for what a
synthesizer could see: the state only (the library's synthesizer), the next inputs only, both;
and a small MLP on the state and on both. R^2 is pooled over all state units: the fraction of the
target's variance (around its training mean) explained out of sample.

The verdict's threshold, ``THRESHOLD`` = 0.02 on the best held-out R^2 of a state-only model (the
library's synthesizer sees the state only). Measured with the defaults of this module (200 batches
of TBPTT, >= 8,000 cut rows): delayed recall D=5, T=4, where DNI learns what TBPTT cannot, 0.74;
character LM at T=5, where DNI closed no measurable part of the gap to TBPTT(2T) (issue 27),
0.002 (Penn Treebank) and 0.008 (Python source). 0.02 sits above every text value and far below
recall's. It is a screen, not a guarantee: a predictable gradient is necessary for a synthesizer
to help, not sufficient (on text, at the data we could afford, even the exact cross-cut gradient,
TBPTT(2T), did not beat TBPTT(T)).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import targets as tg
from .spec import Spec, load_spec, split_batch

THRESHOLD = 0.02
HELPS = "DNI can help here: the state at a cut predicts part of the gradient truncation drops"
NO_GAIN = "expect no gain: the future gradient is not predictable from what the synthesizer sees"


@dataclass
class Diagnosis:
    """What :func:`diagnose` found. ``r2`` maps ``"<features> -> <target>"`` to held-out R^2."""
    r2: dict
    cuts: int                 # rows collected (cut x batch row)
    train_rows: int
    test_rows: int
    train_loss: float         # mean chunk loss over the last tenth of the brief training
    helps: bool
    verdict: str
    threshold: float = THRESHOLD
    notes: list = field(default_factory=list)

    def table(self) -> str:
        lines = ["| features | R^2, next chunk's gradient | R^2, all later losses' gradient |", "|---|---|---|"]
        for feat in ("state", "next inputs", "state + next inputs", "MLP(state)", "MLP(state + next inputs)"):
            a, b = self.r2.get(f"{feat} -> next"), self.r2.get(f"{feat} -> future")
            if a is None and b is None:
                continue
            lines.append(f"| {feat} | {_fmt(a)} | {_fmt(b)} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"r2": self.r2, "cuts": self.cuts, "train_rows": self.train_rows, "test_rows": self.test_rows,
                "train_loss": self.train_loss, "helps": self.helps, "verdict": self.verdict,
                "threshold": self.threshold, "notes": self.notes}


def _fmt(v):
    return "-" if v is None else f"{v:+.4f}"


# ---------------------------------------------------------------------------------------- data
def _chunks(spec: Spec, index: int, truncation: int):
    got = spec.batch(index)
    if not isinstance(got, (tuple, list)) or len(got) not in (2, 3) or not torch.is_tensor(got[0]) \
            or got[0].dim() < 2:
        x, y, mask = split_batch(spec, index, -1)  # raises the contract's own error
    length = got[0].shape[1]
    if length % truncation:
        raise ValueError(f"diagnose: Spec.batch({index}) has {length} steps, not a multiple of truncation "
                         f"{truncation}; pass --truncation T with T dividing the sequence length")
    x, y, mask = split_batch(spec, index, length)
    n = length // truncation
    if n < 2 and not spec.stream_groups:
        raise ValueError(f"diagnose: a sequence of {length} steps is one chunk of {truncation}: there is no cut. "
                         "Use a smaller truncation")
    sl = [slice(c * truncation, (c + 1) * truncation) for c in range(n)]
    return [(x[:, s], y[:, s], None if mask is None else mask[:, s]) for s in sl]


def _train(spec: Spec, model: nn.Module, steps: int, truncation: int, lr: float, clip: float) -> float:
    """Plain truncated BPTT on batches 0..steps-1, one optimizer step per chunk."""
    opt = spec.optimizer(model.parameters()) if spec.optimizer else torch.optim.Adam(model.parameters(), lr=lr)
    groups, carried, losses = spec.stream_groups, {}, []
    for i in range(steps):
        state = carried.get(i % groups) if groups else None
        for xc, yc, mc in _chunks(spec, i, truncation):
            out, state = model(xc, state)
            loss = spec.loss(out, yc, mc)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"diagnose: the loss is {float(loss)} at batch {i} of TBPTT training")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            state = tg.detach(state)
            losses.append(float(loss.detach()))
        if groups:
            carried[i % groups] = state
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail), carried


def _collect_batch(spec: Spec, model: nn.Module, index: int, truncation: int, start):
    """Rows of one batch: per cut (state, next inputs, dL_next/dh, dL_{>=next}/dh), and the end state."""
    chunks = _chunks(spec, index, truncation)
    # pass 1: every cut a leaf -> the gradient of the next chunk's loss only
    state, leaves, total = start, [], 0.0
    for c, (xc, yc, mc) in enumerate(chunks):
        if state is not None:
            state = tg.detach_requires_grad(state)
            leaves.append((c, state))
        out, state = model(xc, state)
        loss = spec.loss(out, yc, mc)
        total = total + loss
    end = tg.detach(state)
    if not leaves:
        return [], end
    total.backward()
    # pass 2: one graph through the whole sequence -> the gradient of all later losses
    state, kept, total = None if start is None else tg.detach_requires_grad(start), [], 0.0
    for c, (xc, yc, mc) in enumerate(chunks):
        if state is not None:
            if not any(t.requires_grad for t in tg.as_tuple(state)):
                state = tg.detach_requires_grad(state)  # frozen weights: the first cut starts the graph
            for t in tg.as_tuple(state):
                if not t.is_leaf:
                    t.retain_grad()
            kept.append((c, state))
        out, state = model(xc, state)
        total = total + spec.loss(out, yc, mc)
    total.backward()
    rows = []
    for (c, leaf), (_, full) in zip(leaves, kept):
        def grad(s):
            return tg.flatten_state(tg.like([torch.zeros_like(t) if t.grad is None else t.grad
                                             for t in tg.as_tuple(s)], s)).detach()
        rows.append((tg.flatten_state(tg.detach(leaf)), chunks[c][0].detach(), grad(leaf), grad(full)))
    return rows, end


def collect(spec: Spec, model: nn.Module, first: int, rows: int, truncation: int, carried: dict,
            max_batches: int = 10_000) -> dict:
    """At least ``rows`` cut rows from batches ``first, first+1, ...`` with the model's weights frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    groups = spec.stream_groups
    out = {"state": [], "inputs": [], "next": [], "future": [], "group": []}
    n, i = 0, first
    while n < rows:
        if i - first >= max_batches:
            raise RuntimeError(f"diagnose: {max_batches} batches gave only {n} cut rows (asked for {rows})")
        start = carried.get(i % groups) if groups else None
        got, end = _collect_batch(spec, model, i, truncation, start)
        if groups:
            carried[i % groups] = end
        for s, x, g_next, g_future in got:
            out["state"].append(s)
            out["inputs"].append(x)
            out["next"].append(g_next)
            out["future"].append(g_future)
            out["group"].append(torch.full((s.shape[0],), i))
            n += s.shape[0]
        i += 1
    return {k: torch.cat(v) for k, v in out.items()}


def input_features(x: torch.Tensor, vocab: int | None = None) -> torch.Tensor:
    """Next-chunk inputs as features: one-hot per position for ids, flattened values otherwise."""
    if not torch.is_floating_point(x):
        v = int(x.max()) + 1 if vocab is None else vocab
        return F.one_hot(x.long(), v).flatten(1).double()
    return x.flatten(1).double()


# ---------------------------------------------------------------------------------------- fits
def ridge_r2(x_train, y_train, x_test, y_test, alphas=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)) -> float:
    """Held-out R^2 of ridge regression (closed form, torch.linalg), the penalty picked on the last
    quarter of the training rows. Features z-scored and targets centred on training statistics."""
    def fit(xa, ya, alpha):
        mx, sx = xa.mean(0), _spread(xa)
        my = ya.mean(0)
        xs = (xa - mx) / sx
        gram = xs.T @ xs
        lam = alpha * gram.diagonal().mean().clamp_min(1e-12)
        w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xs.T @ (ya - my))
        return lambda xb: ((xb - mx) / sx) @ w + my

    x_train, y_train, x_test, y_test = (t.double() for t in (x_train, y_train, x_test, y_test))
    cut = int(0.75 * x_train.shape[0])
    best = max(alphas, key=lambda a: r2(fit(x_train[:cut], y_train[:cut], a)(x_train[cut:]), y_train[cut:],
                                        y_train[:cut].mean(0)))
    return r2(fit(x_train, y_train, best)(x_test), y_test, y_train.mean(0))


def _spread(x: torch.Tensor) -> torch.Tensor:
    """Per-feature scale for z-scoring, floored at 10% of the median spread: a feature (say a
    character's one-hot) that is constant or nearly so in the fitted rows must not turn into a
    huge value on a held-out row where it is on."""
    sd = x.std(0)
    live = sd[sd > 0]
    floor = 0.1 * (live.median() if live.numel() else torch.ones((), dtype=x.dtype))
    return sd.clamp_min(float(floor))


def r2(pred: torch.Tensor, y: torch.Tensor, mean: torch.Tensor) -> float:
    """1 - SSE / SST pooled over all output units, SST around ``mean`` (the training mean)."""
    sst = float((y - mean).pow(2).sum())
    return 1.0 - float((y - pred).pow(2).sum()) / sst if sst > 0 else 0.0


def mlp_r2(x_train, y_train, x_test, y_test, hidden: int = 256, epochs: int = 40, seed: int = 0) -> float:
    """Held-out R^2 of a one-hidden-layer MLP (GELU, Adam 1e-3, batches of 256), stopped at the epoch
    with the best score on the last quarter of the training rows."""
    g = torch.Generator().manual_seed(seed)
    x_train, y_train, x_test, y_test = (t.float() for t in (x_train, y_train, x_test, y_test))
    mx, sx = x_train.mean(0), _spread(x_train)
    my, sy = y_train.mean(0), y_train.pow(2).mean().sqrt().clamp_min(1e-20)
    norm = lambda x: ((x - mx) / sx).clamp(-10, 10)  # noqa: E731  (a rare feature stays bounded)
    cut = int(0.75 * x_train.shape[0])
    xa, ya, xv, yv = norm(x_train[:cut]), (y_train[:cut] - my) / sy, norm(x_train[cut:]), (y_train[cut:] - my) / sy
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(xa.shape[1], hidden), nn.GELU(), nn.Linear(hidden, ya.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    best, best_state = -math.inf, None
    for _ in range(epochs):
        order = torch.randperm(xa.shape[0], generator=g)
        for b in range(0, xa.shape[0], 256):
            idx = order[b:b + 256]
            loss = F.mse_loss(net(xa[idx]), ya[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            score = r2(net(xv), yv, ya.mean(0))
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    with torch.no_grad():
        return r2(net(norm(x_test)) * sy + my, y_test, y_train.mean(0))


# ---------------------------------------------------------------------------------------- main
def diagnose(spec: Spec, *, truncation: int | None = None, steps: int = 200, cuts: int = 8000, lr: float = 1e-3,
             clip: float = 1.0, seed: int = 0, holdout: float = 0.2, mlp: bool = True,
             threshold: float = THRESHOLD, log=None) -> Diagnosis:
    """Train ``spec``'s model ``steps`` batches with TBPTT(``truncation``), then measure how much of the
    next chunk's true gradient at a cut ridge regression (and an MLP) predicts on held-out batches.

    Args:
        spec: a :class:`dni_dist.Spec` (its ``batch`` must return sequences whose length is a
            multiple of ``truncation``; ``stream_groups`` is honoured, so cuts between batches count).
        truncation: T, the chunk length you would train with (default: ``spec.truncation``).
        steps: batches of TBPTT training before the model is frozen (0: the untrained model).
        cuts: how many rows (cut x batch row) to collect at least.
        holdout: fraction of the collected batches scored (the rest is fitted).
        mlp: also fit a one-hidden-layer MLP (a few seconds more).
        threshold: the verdict's cut-off on the state-only R^2 (module docstring).
    """
    if not isinstance(spec, Spec):
        raise TypeError(f"diagnose(spec=...): expected a dni_dist.Spec; got {type(spec).__name__}")
    truncation = truncation or spec.truncation
    if not truncation:
        raise ValueError("diagnose(spec, truncation=T): give T, the chunk length you would train with, or a spec "
                         "that carries its own (Spec(truncation=...))")
    if isinstance(truncation, bool) or not isinstance(truncation, int) or truncation < 1:
        raise ValueError(f"diagnose(truncation={truncation!r}): expected a positive int (the chunk length T)")
    if not 0 < holdout < 1:
        raise ValueError(f"diagnose(holdout={holdout!r}): expected a fraction in (0, 1)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"diagnose(steps={steps!r}): expected an int >= 0 (batches of TBPTT training)")
    if isinstance(cuts, bool) or not isinstance(cuts, int) or cuts < 50:
        raise ValueError(f"diagnose(cuts={cuts!r}): expected an int >= 50 (rows to fit and score)")
    say = log or (lambda *_: None)
    torch.manual_seed(seed)
    model = spec.model()
    say(f"training {steps} batches with TBPTT(T={truncation}) ...")
    train_loss, carried = _train(spec, model, steps, truncation, lr, clip) if steps else (float("nan"), {})
    say(f"collecting >= {cuts} cut rows (train loss per chunk {train_loss:.4f}) ...")
    data = collect(spec, model, steps, cuts, truncation, carried)
    groups = data["group"]
    batches = groups.unique()
    n_test = max(1, int(round(holdout * len(batches))))
    if len(batches) - n_test < 1:
        raise ValueError("diagnose: too few batches to hold some out; raise cuts")
    test = torch.isin(groups, batches[-n_test:])
    train = ~test
    feats = {"state": data["state"].double(), "next inputs": input_features(data["inputs"])}
    feats["state + next inputs"] = torch.cat([feats["state"], feats["next inputs"]], 1)
    out = {}
    for target in ("next", "future"):
        y = data[target].double()
        for name, x in feats.items():
            out[f"{name} -> {target}"] = ridge_r2(x[train], y[train], x[test], y[test])
            say(f"  ridge {name} -> {target}: {out[f'{name} -> {target}']:+.4f}")
        if mlp and target == "next":
            for name in ("state", "state + next inputs"):
                x = feats[name]
                out[f"MLP({name}) -> {target}"] = mlp_r2(x[train], y[train], x[test], y[test], seed=seed)
                say(f"  MLP {name} -> {target}: {out[f'MLP({name}) -> {target}']:+.4f}")
    state_best = max(v for k, v in out.items() if k in ("state -> next", "MLP(state) -> next"))
    both_best = max(v for k, v in out.items() if "next inputs" in k and k.endswith("-> next"))
    helps = state_best >= threshold
    notes = []
    if not helps and both_best >= threshold:
        notes.append(f"with the next chunk's inputs the R^2 reaches {both_best:+.3f}: only a synthesizer that "
                     "also sees what the next chunk reads could predict part of it")
    return Diagnosis(r2=out, cuts=int(groups.numel()), train_rows=int(train.sum()), test_rows=int(test.sum()),
                     train_loss=train_loss, helps=helps, verdict=HELPS if helps else NO_GAIN, threshold=threshold,
                     notes=notes)


def _builtin(args) -> tuple[Spec, int]:
    from .config import Config
    from .tasks.specs import task_spec
    kw = {"task": args.task, "seed": args.seed}
    for name in ("delay", "corpus", "hidden", "batch", "chunks", "truncation", "copy_len", "repeats"):
        v = getattr(args, name)
        if v is not None:
            kw[name] = v
    if args.task == "charlm":
        kw.setdefault("truncation", 5)
        kw.setdefault("chunks", 8)
        kw.setdefault("hidden", 128)
    elif args.task in ("copy", "repeat_copy"):
        kw.setdefault("truncation", 5)
    cfg = Config(**kw)
    return task_spec(cfg), cfg.truncation


def main(argv=None) -> Diagnosis:
    p = argparse.ArgumentParser(prog="python -m dni_dist.diagnose", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", help="'package.module:attribute' naming a dni_dist.Spec (or a function returning one)")
    src.add_argument("--task", choices=["recall", "copy", "repeat_copy", "charlm"], help="a built-in task")
    p.add_argument("--truncation", type=int, default=None, help="chunk length T (default: the spec's own truncation)")
    p.add_argument("--steps", type=int, default=200, help="batches of TBPTT training before freezing")
    p.add_argument("--cuts", type=int, default=8000, help="cut rows (cut x batch row) to collect at least")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam lr of the brief training (spec's optimizer wins)")
    p.add_argument("--clip", type=float, default=1.0, help="grad-norm clip of the brief training (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-mlp", action="store_true", help="skip the MLP fits")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="verdict cut-off on the state-only R^2")
    p.add_argument("--json", default="", help="also write the result here")
    g = p.add_argument_group("built-in tasks (--task)")
    for name, typ in (("delay", int), ("corpus", str), ("hidden", int), ("batch", int), ("chunks", int),
                      ("copy_len", int), ("repeats", int)):
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.spec:
        spec = load_spec(args.spec)
        T = args.truncation or spec.truncation
        if T is None:
            p.error("--spec needs --truncation T (the chunk length you would train with), or a spec that "
                    "carries its own (Spec(truncation=...))")
    else:
        spec, T = _builtin(args)
    result = diagnose(spec, truncation=T, steps=args.steps, cuts=args.cuts, lr=args.lr, clip=args.clip,
                      seed=args.seed, mlp=not args.no_mlp, threshold=args.threshold,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"{spec.name or args.task}: T={T}, {result.cuts} cut rows ({result.train_rows} fitted, "
          f"{result.test_rows} held out), TBPTT train loss per chunk {result.train_loss:.4f}")
    print(result.table())
    print(f"verdict (state-only R^2 >= {result.threshold}): {result.verdict}")
    for n in result.notes:
        print("note:", n)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=1)
    return result


if __name__ == "__main__":
    main()
