"""What every runner shares: resume and checkpoints, evaluation, progress, live metrics."""
from __future__ import annotations

import json
import os
import resource
import sys
import time

import torch

from ..checkpoint import CheckpointError, check_writable, clean_temporary, latest, save
from ..config import Config
from ..engine.schedule import Schedule


def resume_point(cfg: Config, spec_name: str, worker) -> int:
    """Load the latest complete checkpoint into ``worker`` when resuming; return the next batch.
    Refuses a checkpoint of a different experiment, naming every field that differs."""
    if not cfg.resume:
        return 0
    found = latest(cfg.checkpoint_dir)
    if found is None:
        raise CheckpointError(f"--resume: no checkpoint in {cfg.checkpoint_dir!r} (ckpt-<batch>.pt); "
                              "run without --resume to start from batch 0")
    batch, state = found
    diffs = cfg.differences(state.get("config", {}))
    if state.get("spec", spec_name) != spec_name:
        diffs.insert(0, f"spec: {state.get('spec')!r} in the checkpoint, {spec_name!r} now")
    if diffs:
        raise CheckpointError(f"--resume: the checkpoint in {cfg.checkpoint_dir!r} (batch {batch}) is from a "
                              "different experiment: " + "; ".join(diffs) + ". Use another --checkpoint-dir, "
                              "or the same options (those that may change are listed in README: Resume)")
    if batch > cfg.steps:
        raise CheckpointError(f"--resume: the checkpoint is at batch {batch}, past --steps {cfg.steps}")
    worker.load_checkpoint(state)
    return batch


def prepare_paths(cfg: Config) -> None:
    """Check at start what would otherwise fail late: the checkpoint dir and the metrics paths."""
    if cfg.checkpoint_dir:
        check_writable(cfg.checkpoint_dir)
        clean_temporary(cfg.checkpoint_dir)
    for flag, path in (("--metrics-json", cfg.metrics_json), ("--metrics-csv", cfg.metrics_csv),
                       ("--save", cfg.save)):
        if path:
            _check_file(flag, path)


def _check_file(flag: str, path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"{flag} {path!r}: cannot create its directory: {e}") from e
    if os.path.isdir(path) or not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise CheckpointError(f"{flag} {path!r} is not a writable file path")


def checkpoint_due(cfg: Config, sched: Schedule, tick: int) -> bool:
    """Whether a checkpoint is taken at the end of ``tick``: a batch left the pipeline there and
    the batches done are a multiple of ``--checkpoint-every`` (not the last: that one is taken
    after the run drains)."""
    done = sched.done_by(tick)
    if not cfg.checkpoint_every or done == sched.done_by(tick - 1):
        return False
    batch = sched.first_batch + done
    return batch % cfg.checkpoint_every == 0 and batch < cfg.steps


def save_checkpoint(cfg: Config, spec_name: str, batch: int, worker, inflight: list, loop: dict | None) -> None:
    """Rank 0 writes what a resumed run needs: the replica every worker shares (``worker``), each
    worker's in-flight state (``inflight``, by rank) and, mid-run, where the schedule goes on
    (``loop``: its first batch, the next tick and the sum in flight; None once drained)."""
    save(cfg.checkpoint_dir, batch, {"worker": worker.state_dict(), "inflight": inflight, "loop": loop,
                                     "config": cfg.to_dict(), "spec": spec_name}, keep=cfg.keep_checkpoints)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Reporter:
    """Rank 0's view of the run: progress (a bar on a terminal, else a line every ``log_every``
    seconds), rows appended to ``--metrics-csv`` as they happen, TensorBoard scalars, and the
    spec's ``evaluate`` every ``eval_every`` batches."""

    def __init__(self, cfg: Config, spec, worker, start: int, label: str = ""):
        self.cfg, self.spec, self.worker, self.start = cfg, spec, worker, start
        self.label = label or f"{cfg.mode} K={cfg.workers}"
        self.t0 = time.perf_counter()
        self.done, self.rows, self.evals = start, len(worker.losses), []
        self.tokens_per_batch = worker.batch_size * cfg.length
        self.bar, self.csv, self.tb = None, None, None
        self._last_line, self._last_bar = self.t0, 0.0
        self.tty = sys.stderr.isatty()
        if cfg.progress and self.tty:
            from tqdm import tqdm
            self.bar = tqdm(total=cfg.steps, initial=start, desc=self.label, unit="batch", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5)
        if cfg.metrics_csv:
            new = start == 0 or not os.path.exists(cfg.metrics_csv)
            self.csv = open(cfg.metrics_csv, "w" if new else "a")
            if new:
                self.csv.write("step,batch,loss,tokens_per_s,skill,gate\n")
                self.csv.flush()
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("--tensorboard needs the tensorboard package: pip install 'dni_dist[tensorboard]' "
                                  "(or pip install tensorboard)") from e
            self.tb = SummaryWriter(cfg.tensorboard)

    def tokens_per_s(self) -> float:
        return (self.done - self.start) * self.tokens_per_batch / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, batches_done: int) -> None:
        w, cfg = self.worker, self.cfg
        stats = w.synth.stats if w.synth is not None else None
        tok = self.tokens_per_s()
        while self.rows < len(w.losses):
            i, loss = self.rows, w.losses[self.rows]
            if self.csv is not None:
                self.csv.write(f"{i},{batches_done},{loss:.6g},{tok:.1f},"
                               f"{stats.skill if stats else ''},{stats.gate if stats else ''}\n")
            if self.tb is not None and i % 10 == 0:
                self.tb.add_scalar("train/loss", loss, i)
                self.tb.add_scalar("train/tokens_per_s", tok, i)
                if stats is not None:
                    self.tb.add_scalar("synth/skill", stats.skill, i)
                    self.tb.add_scalar("synth/gate", stats.gate, i)
                    self.tb.add_scalar("synth/correlation", stats.correlation, i)
                    self.tb.add_scalar("synth/target_rms", float(w.synth.target_ms) ** 0.5, i)
            self.rows += 1
        if self.csv is not None:
            self.csv.flush()
        crossed = batches_done > self.done
        prev, self.done = self.done, batches_done
        if crossed and self.spec.evaluate and cfg.eval_every and batches_done // cfg.eval_every > prev // cfg.eval_every \
                and batches_done < cfg.steps:
            self.evaluate()
        now = time.perf_counter()
        if self.bar is not None and crossed:
            self.bar.update(batches_done - self.bar.n)
            if now - self._last_bar > 0.5:
                self._last_bar = now
                self.bar.set_postfix_str(self._summary(tok, stats), refresh=False)
        elif self.bar is None and cfg.progress and (now - self._last_line >= cfg.log_every or
                                                    batches_done == cfg.steps and crossed):
            self._last_line = now
            print(f"[{self.label}] batch {batches_done}/{cfg.steps}  {self._summary(tok, stats)}  "
                  f"{now - self.t0:.0f}s", file=sys.stderr, flush=True)

    def _summary(self, tok, stats) -> str:
        recent = self.worker.losses[-self.cfg.chunks:]
        loss = f"loss {sum(recent) / len(recent):.4f}  " if recent else ""
        synth = f"  skill {stats.skill:+.3f} gate {stats.gate:.2f}" if stats is not None else ""
        return f"{loss}{tok:,.0f} tok/s{synth}"

    def evaluate(self) -> dict:
        """Run the spec's evaluate (no_grad, eval mode; RNG and mode restored) and log it."""
        model = self.worker.model
        rng, training = torch.get_rng_state(), model.training
        model.eval()
        try:
            with torch.no_grad():
                got = self.spec.evaluate(model)
        finally:
            model.train(training)
            torch.set_rng_state(rng)
        if not isinstance(got, dict):
            raise TypeError(f"Spec.evaluate must return a dict of floats; got {type(got).__name__}")
        row = {"batch": self.done, **{k: float(v) for k, v in got.items()}}
        self.evals.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "batch":
                    self.tb.add_scalar(f"eval/{k}", v, self.done)
        if self.cfg.progress:
            print(f"[{self.label}] eval at batch {self.done}: " +
                  "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "batch"), file=sys.stderr, flush=True)
        return row

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.csv is not None:
            self.csv.close()
        if self.tb is not None:
            self.tb.close()


def metrics(cfg: Config, worker, wall_s: float, startup_s: float, batches: int, extra: dict | None = None) -> dict:
    tokens = batches * worker.batch_size * cfg.length
    synth = worker.synth.stats if worker.synth is not None else None
    out = {"losses": list(worker.losses), "tokens_per_s": tokens / max(wall_s, 1e-9) if batches else 0.0,
           "wall_s": wall_s, "startup_s": startup_s, "batches": batches, "peak_rss_mb": peak_rss_mb(),
           "skipped_chunks": worker.skipped, "stream_resets": worker.stream_resets,
           "synth": None if synth is None else {"updates": synth.updates, "skill": synth.skill, "gate": synth.gate,
                                                 "correlation": synth.correlation,
                                                 "nonfinite_targets": synth.nonfinite_targets,
                                                 # this worker's boundaries, and those whose discounted
                                                 # target took the extra J^T g pass (0 while the gate is shut)
                                                 "targets": worker.n_targets, "jtg_passes": worker.n_jtg_passes},
           "tick_breakdown_s": dict(worker.timers.s) if worker.timers is not None else {},
           "config": cfg.to_dict(), "pid": os.getpid()}
    out.update(extra or {})
    return out


def write_metrics(path: str, m: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(m, f)


def stream_groups(cfg: Config, spec) -> int:
    """The spec's stream groups unless the config sets them. (With parallel='data' each replica
    holds its own rows' streams: a checkpoint saves every rank's, :meth:`Worker.inflight_state`.)"""
    return spec.stream_groups if cfg.stream_groups < 0 else cfg.stream_groups


def worker_run(cfg: Config, spec, worker, transport, start: int, reporter: "Reporter | None", gather=None):
    """The generator one worker runs from batch ``start`` (or from the tick a mid-run checkpoint
    left, :attr:`Worker.resumed_at`) to the end: the whole run as one schedule, with rank 0's
    reporting, and checkpoints at tick ends that hold what is in flight (nothing drains).

    ``gather(inflight_state)`` collects every worker's in-flight state at a checkpoint: rank 0
    gets the list by rank, the others None (a collective under torch.distributed; in debug mode
    rank 0 reads the other workers, which wait at the same tick's end)."""
    from ..engine.loop import Timers, run_schedule, schedule_for, step_rule
    from ..testing.faults import Faults
    faults = Faults.from_config(cfg)
    if reporter is not None and cfg.progress:
        print(f"[{reporter.label}] {step_rule(cfg.workers, cfg.parallel)}", file=sys.stderr, flush=True)
    worker.timers = Timers()
    gather = gather or (lambda mine: [mine])
    synth = worker.synth
    at = worker.resumed_at
    first = at["first_batch"] if at else start
    if first >= cfg.steps:  # resumed from the run's last checkpoint: nothing left to run
        return
    if at and at.get("started", 0) > cfg.steps:
        raise ValueError(f"--resume: the checkpoint was taken with batches up to {at['started'] - 1} in flight "
                         f"(started, partly trained), past --steps {cfg.steps}: resume with --steps >= "
                         f"{at['started']}")
    sched = schedule_for(cfg, first, stream_groups(cfg, spec), synth.lookahead if synth else 1,
                         synth.train_every if synth else 1)
    on_tick = None if reporter is None else (lambda t: reporter.update(sched.first_batch + sched.done_by(t)))

    def on_checkpoint(tick: int, pending) -> None:
        states = gather(worker.inflight_state())
        if reporter is not None:
            save_checkpoint(cfg, spec.name, sched.first_batch + sched.done_by(tick), worker, states,
                            {"first_batch": sched.first_batch, "tick": tick + 1,
                             "pending": None if pending is None else pending.cpu(),
                             "started": sched.first_batch + sched.started_by(tick)})

    yield from run_schedule(worker, transport, sched, cfg.sync, faults, on_tick, worker.timers,
                            lambda t: checkpoint_due(cfg, sched, t), on_checkpoint,
                            start_tick=at["tick"] if at else 0,
                            pending=at["pending"].to(worker.device) if at and at["pending"] is not None else None)
    worker.resumed_at = None
    if cfg.checkpoint_every:  # the last checkpoint, the pipeline drained
        states = gather(worker.inflight_state())
        if reporter is not None:
            save_checkpoint(cfg, spec.name, cfg.steps, worker, states, None)


def finish(cfg: Config, worker, reporter: "Reporter | None", t0: float, startup_s: float, start: int,
           extra: dict | None = None) -> dict:
    """Metrics of a finished run (rank 0 also evaluates once more and saves the model)."""
    wall = time.perf_counter() - t0
    evals = []
    if reporter is not None:
        if reporter.spec.evaluate is not None:
            reporter.evaluate()
        evals = reporter.evals
        reporter.close()
        if cfg.save:
            torch.save(worker.model.state_dict(), cfg.save)
    return metrics(cfg, worker, wall, startup_s, cfg.steps - start, {"evals": evals, **(extra or {})})
