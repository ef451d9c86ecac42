"""``python -m dni_dist.train``: one entry point for every mode.

    python -m dni_dist.train [options]                                  # debug: K simulated workers
    torchrun --standalone --nproc-per-node K -m dni_dist.train [...]     # one worker per process
    python -m dni_dist.train --backend ray --workers K [--ray-address A] # Ray actors
    python -m dni_dist.train --spec package.module:spec [...]            # your own model and data

Parse -> build -> run -> close. ``--compare`` (debug mode) trains TBPTT and DNI on the same data
and prints a table: the README's main job.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback

from .checkpoint import CheckpointError
from .cli import build, parser, read
from .config import Config, ConfigError, defaults
from .engine.worker import DivergenceError
from .files import WriteError
from .fit import SpecError, resolve_spec, run, under_torchrun
from .runners.common import EndOfRunError, RunFailed, write_metrics
from .spec import load_spec


def summary(m: dict, cfg: Config) -> str:
    tail = m["losses"][-cfg.chunks * 10:]
    evals = "".join(f"  {k} {v:.4f}" for k, v in (m["evals"][-1].items() if m["evals"] else ()) if k != "batch")
    return (f"{cfg.mode:>6}  K={cfg.workers}  final loss/chunk {sum(tail) / max(len(tail), 1):.4f}{evals}  "
            f"{m['tokens_per_s']:,.0f} tokens/s  {m['wall_s']:.1f}s  peak RSS {m['peak_rss_mb']:.0f} MB")


def chance_per_chunk(cfg: Config, spec) -> str:
    """The loss per chunk of always predicting the base rate (built-in bit tasks), for --compare."""
    import math
    if cfg.spec or cfg.task == "charlm":
        return ""
    x, y, mask = spec.batch(0)[:3]
    steps = float(mask.sum()) / x.shape[0] / cfg.chunks  # target steps per chunk
    bits = y.shape[-1]
    return f", chance {steps * bits * math.log(2):.2f}"


def main(argv=None, spec=None) -> int:
    """The command line; ``spec``: a Spec object to train instead of ``--spec``/``--task`` (a
    script that defines its spec: examples/own_model.py)."""
    p = parser()
    p.add_argument("--compare", action="store_true", default=False,
                   help="debug mode: train TBPTT and DNI with the same seed and data, then print a table")
    ns, values, sources = read(p, argv)
    rank0 = not under_torchrun() or int(os.environ.get("RANK", 0)) == 0
    try:
        if spec is None and values.get("spec"):
            spec = load_spec(values["spec"])
        elif spec is not None and not spec.name:
            spec.name = getattr(spec.model, "__qualname__", "spec")
        notes: list[str] = []
        cfg = build(p, values, sources, spec, notes)  # resolved: what the launcher decides is in it
        if rank0:
            for note in notes:
                print(f"dni_dist: warning: {note}", file=sys.stderr, flush=True)
            unset = defaults()
            print("config: " + json.dumps({k: v for k, v in cfg.to_dict().items() if v != unset[k]
                                           or k in ("workers", "mode", "backend")}), file=sys.stderr, flush=True)
        if ns.compare:
            return _compare(cfg, spec)
        result = run(spec or resolve_spec(cfg), cfg)
    except EndOfRunError as e:
        return _end_of_run_failed(e, cfg)
    except SpecError as e:  # the user's own code: its traceback, then which spec function raised
        if e.__cause__ is not None:  # raised in the user's code (else: what it returned, said in one line)
            traceback.print_exception(e.__cause__, file=sys.stderr)
        print(f"dni_dist: error in your spec: {e}", file=sys.stderr, flush=True)
        return 1
    except WriteError as e:  # a full disk or an unwritable place, mid-run: one line
        print(f"dni_dist: error: {e}", file=sys.stderr, flush=True)
        return 1
    except (CheckpointError, ImportError, TypeError, ValueError, RuntimeError) as e:
        if type(e).__name__ == "Stopped":  # the Ray driver got SIGTERM and stopped its actors
            print(f"dni_dist: {e}", file=sys.stderr, flush=True)
            return 143
        if isinstance(e, (DivergenceError, ConfigError)) \
                or type(e) in (CheckpointError, ImportError, TypeError, ValueError):
            print(f"dni_dist: error: {e}", file=sys.stderr, flush=True)
            return 1 if isinstance(e, DivergenceError) else 2
        raise
    m = result.metrics
    if m is not None:
        print(summary(m, cfg), flush=True)
        try:
            write_metrics(cfg.metrics_json, m)
        except WriteError as e:
            print(f"dni_dist: error: {e}", file=sys.stderr, flush=True)
            return 1
    return 0


def _end_of_run_failed(e: EndOfRunError, cfg: Config) -> int:
    """The loop ended but something after it failed: write what can be written, then say what
    failed (the user's traceback first when their code raised) and exit 1."""
    message = str(e)
    if e.metrics is not None:
        try:
            print(summary(e.metrics, cfg), flush=True)
        except Exception:  # noqa: BLE001 - a summary must not hide the error
            pass
        try:
            write_metrics(cfg.metrics_json, e.metrics)
        except WriteError as w:
            message += f"; {w}"
    cause = e.__cause__
    if isinstance(cause, SpecError):
        if cause.__cause__ is not None:
            traceback.print_exception(cause.__cause__, file=sys.stderr)
    elif cause is not None and not isinstance(cause, (WriteError, RunFailed)):
        traceback.print_exception(cause, file=sys.stderr)
    print(f"dni_dist: error: {message}", file=sys.stderr, flush=True)
    return 1


def compare_table(rows: list, chunks: int, chance: str = "") -> str:
    """``--compare``'s table: one row per mode, the loss per chunk over the last 10 batches, the
    spec's own final evaluation (every metric it returned), tokens/s; columns aligned."""
    names = []
    for _, m in rows:
        for k in (m.get("evals") or [{}])[-1]:
            if k != "batch" and k not in names:
                names.append(k)
    header = ["mode", f"loss/chunk (last 10 batches{chance})", *names, "tokens/s"]
    body = []
    for mode, m in rows:
        tail = m["losses"][-chunks * 10:]
        last = (m.get("evals") or [{}])[-1]
        body.append([mode, f"{sum(tail) / len(tail):.4f}" if tail else "-",
                     *(f"{last[k]:.4f}" if k in last else "-" for k in names), f"{m['tokens_per_s']:,.0f}"])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *body]]
    return "\n".join(lines)


def _compare(cfg: Config, own=None) -> int:
    rows = []
    spec = None
    for mode in ("tbptt", "dni"):
        c = dataclasses.replace(cfg, mode=mode, backend="debug")
        spec = own or resolve_spec(c)
        m = run(spec, c).metrics
        rows.append((mode, m))
        print(summary(m, c), flush=True)
    print()
    print(compare_table(rows, cfg.chunks, "" if own else chance_per_chunk(cfg, spec)))
    write_metrics(cfg.metrics_json, {mode: m for mode, m in rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
