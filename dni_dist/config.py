"""One validated configuration for every mode (debug, torchrun, Ray).

World size and rank are not here: the launcher supplies them.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field


@dataclass(kw_only=True)
class Config:
    # task
    task: str = "recall"
    """'recall' (target = input ``delay`` steps earlier, a random bit stream) or 'copy' (fixed
    copy length ``copy_len``)."""
    delay: int = 5
    """recall: how many steps back the target is."""
    copy_len: int = 6
    """copy: pattern length N (sequence 2N+1 steps, padded to chunks*truncation)."""
    # model
    hidden: int = 64
    """LSTM hidden size H."""
    layers: int = 1
    """LSTM layers."""
    batch: int = 32
    """sequences per batch B."""
    truncation: int = 4
    """chunk length T (truncation of BPTT)."""
    chunks: int = 20
    """chunks per sequence N; a sequence has N*T steps."""
    # training
    mode: str = "dni"
    """'dni' (synthetic gradients at boundaries) or 'tbptt' (plain truncation)."""
    steps: int = 1200
    """batches of sequences to train on (each is N chunks; optimizer steps = ticks)."""
    seed: int = 0
    """seed of weights and data (identical on every worker)."""
    lr: float = 1e-3
    """Adam learning rate of the RNN and head."""
    clip: float = 0.0
    """max global grad norm of the RNN and head (0 = off)."""
    synth_lr: float = 3e-3
    """Adam learning rate of the synthesizer (in normalized target units)."""
    factor: float = 1.0
    """scale of the injected synthetic gradient."""
    discount: float = 0.5
    """bootstrap discount gamma."""
    device: str = "cpu"
    """'cpu' or 'cuda' (torchrun on GPUs: NCCL, one GPU per process)."""
    # engine
    workers: int = 1
    """K: workers (processes, actors, or simulated in debug mode); must divide ``chunks``."""
    parallel: str = "pipeline"
    """'pipeline' (worker k owns chunk block k: the decoupled engine) or 'data' (the baseline:
    every worker runs whole sequences on batch/workers rows; torch or ray backend)."""
    sync: str = "exact"
    """'exact' (all-reduce, then step, every tick: replicas equal one process) or 'overlap' (tick
    t's all-reduce runs during tick t+1's compute and deltas are absorbed one tick later: every
    update applies a gradient one step stale)."""
    backend: str = "debug"
    """'debug' (one process simulates K workers), 'torch' (torchrun), 'ray'."""
    timeout_s: float = 120.0
    """longest wait for any message or collective before a worker fails."""
    checkpoint_dir: str = ""
    """where to write checkpoints ('' = none)."""
    checkpoint_every: int = 0
    """checkpoint every this many batches (0 = never)."""
    resume: bool = False
    """continue from the latest complete checkpoint in ``checkpoint_dir``."""
    metrics_json: str = ""
    """write metrics (losses, tokens_per_s, peak_rss_mb, config) here."""
    metrics_csv: str = ""
    """write the loss of every optimizer step here as CSV (step,loss)."""
    ray_address: str = ""
    """Ray cluster address ('' = start a local instance)."""
    progress: bool = True
    """show a progress bar (rank 0 only)."""
    fail_at: int = -1
    """testing aid: worker ``fail_rank`` raises at this batch (-1 = never)."""
    fail_rank: int = 0
    """testing aid: which worker fails at ``fail_at``."""
    fail_mode: str = "raise"
    """testing aid: 'raise' an exception, 'kill' the process (SIGKILL), or feed 'nan' inputs.
    With a checkpoint_dir, a failure happens once (a marker file records it)."""
    max_restarts: int = 0
    """Ray: restart the worker group from the last checkpoint this many times."""

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"{name}={getattr(self, name)!r}: expected {expected}")
        if self.task not in ("recall", "copy"):
            bad("task", "'recall' or 'copy'")
        if self.mode not in ("dni", "tbptt"):
            bad("mode", "'dni' or 'tbptt'")
        if self.backend not in ("debug", "torch", "ray"):
            bad("backend", "'debug', 'torch' or 'ray'")
        for name in ("hidden", "layers", "batch", "truncation", "chunks", "steps", "workers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "a positive int")
        if self.sync not in ("exact", "overlap"):
            bad("sync", "'exact' or 'overlap'")
        if self.parallel not in ("pipeline", "data"):
            bad("parallel", "'pipeline' or 'data'")
        if self.parallel == "data" and self.batch % self.workers:
            raise ValueError(f"parallel='data' splits the batch: batch({self.batch}) must be a multiple of "
                             f"workers({self.workers})")
        if self.parallel == "data" and self.backend == "debug" and self.workers > 1:
            raise ValueError("parallel='data' runs under torchrun or Ray (backend 'torch' or 'ray'), not debug")
        if self.parallel == "pipeline" and self.chunks % self.workers:
            raise ValueError(f"chunks({self.chunks}) must be a multiple of workers({self.workers}): "
                             "each worker owns a contiguous block of chunks")
        length = self.chunks * self.truncation
        if self.task == "recall" and not 0 <= self.delay < length:
            raise ValueError(f"delay({self.delay}) must be in [0, chunks*truncation={length})")
        if self.task == "copy" and self.copy_len < 1:
            bad("copy_len", "a positive int")
        if self.task == "copy" and 2 * self.copy_len + 1 > length:
            raise ValueError(f"copy needs 2*copy_len+1 = {2 * self.copy_len + 1} <= chunks*truncation = {length}; "
                             "raise --chunks or --truncation (nothing is truncated silently)")
        if self.device not in ("cpu", "cuda"):
            bad("device", "'cpu' or 'cuda'")
        if self.fail_mode not in ("raise", "kill", "nan"):
            bad("fail_mode", "'raise', 'kill' or 'nan'")
        if not self.timeout_s > 0:
            bad("timeout_s", "> 0 seconds")
        if self.checkpoint_every < 0 or (self.checkpoint_every and not self.checkpoint_dir):
            raise ValueError("checkpoint_every > 0 needs checkpoint_dir")
        if self.resume and not self.checkpoint_dir:
            raise ValueError("resume needs checkpoint_dir")
        if not 0.0 <= self.discount <= 1.0:
            bad("discount", "a number in [0, 1]")

    @property
    def length(self) -> int:
        return self.chunks * self.truncation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parser() -> argparse.ArgumentParser:
    """Command-line options generated from :class:`Config` (help text = field docstrings)."""
    p = argparse.ArgumentParser(prog="python -m dni_dist.train",
                                description="Train an LSTM with synthetic gradients, in one process or many.")
    docs = _field_docs()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=docs.get(f.name))
        else:
            typ = {"int": int, "float": float, "str": str}[str(f.type)]
            p.add_argument(flag, type=typ, default=f.default, help=docs.get(f.name))
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


def from_args(argv=None) -> Config:
    ns = parser().parse_args(argv)
    return Config(**vars(ns))
