"""What every runner shares: resume and checkpoints, evaluation, progress, live metrics."""
from __future__ import annotations

import os
import resource
import sys
import time

import torch

from ..checkpoint import (REUSE_ENV, CheckpointError, begin_run, check_writable, clean_temporary, foreign, latest,
                          save)
from ..files import RowFile, WriteError, write_json
from ..config import Config
from ..engine.schedule import Schedule
from ..trainer import RunHooks


def resume_point(cfg: Config, spec_name: str, worker) -> int:
    """Load the latest complete checkpoint of this experiment into ``worker`` when resuming;
    return the next batch. A newer checkpoint of a different experiment is skipped with a warning;
    if every one differs, refuses naming every field that differs."""
    if not cfg.resume:
        if cfg.checkpoint_dir:
            claim_fresh(cfg, spec_name)
        return 0
    refused = []

    def accept(state: dict) -> str:
        reason = _experiment_differs(cfg, spec_name, state) or \
            ("" if isinstance(state.get("worker"), dict) else "it has no 'worker' entry (the model and optimizer "
                                                               "state): not written by dni_dist's engine")
        if reason:
            refused.append((state["batch"], reason))
        return reason

    found = latest(cfg.checkpoint_dir, accept)
    if found is None and refused:
        batch, reason = refused[0]
        raise CheckpointError(f"--resume: the checkpoint in {cfg.checkpoint_dir!r} (batch {batch}) is from a "
                              f"different experiment: {reason}. Use another --checkpoint-dir, "
                              "or the same options (those that may change are listed in README: Resume)")
    if found is None:
        raise CheckpointError(f"--resume: no checkpoint in {cfg.checkpoint_dir!r} (ckpt-<batch>.pt); "
                              "run without --resume to start from batch 0")
    batch, state = found
    if batch > cfg.steps:
        raise CheckpointError(f"--resume: the checkpoint is at batch {batch}, past --steps {cfg.steps}")
    worker.load_checkpoint(state)
    begin_run(cfg.checkpoint_dir, state.get("run") or {"id": "", "batches": [batch]})
    return batch


def _experiment_differs(cfg: Config, spec_name: str, state: dict) -> str:
    """Why ``state`` is not a checkpoint of this experiment ('' when it is)."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return "it has no 'config' entry, so it cannot be checked to be this experiment (not written by dni_dist's " \
               "engine)"
    diffs = cfg.differences(saved)
    if state.get("spec", spec_name) != spec_name:
        diffs.insert(0, f"spec: {state.get('spec')!r} in the checkpoint, {spec_name!r} now")
    return "; ".join(diffs)


def claim_fresh(cfg: Config, spec_name: str) -> None:
    """A fresh run's checkpoint directory: refuse one holding another experiment's checkpoints
    (unless DNI_DIST_REUSE_CHECKPOINT_DIR=1), and start this run's record of its own files."""
    other = foreign(cfg.checkpoint_dir, lambda state: _experiment_differs(cfg, spec_name, state))
    if other and os.environ.get(REUSE_ENV, "").lower() not in ("1", "true", "yes"):
        raise CheckpointError(
            f"--checkpoint-dir {cfg.checkpoint_dir!r} holds another experiment's checkpoints ({other}); a fresh "
            f"run there would mix two runs' files. Use another --checkpoint-dir, --resume with that experiment's "
            f"options, or set {REUSE_ENV}=1 to start anyway (its files are kept, never deleted, and a later "
            "--resume skips them)")
    begin_run(cfg.checkpoint_dir)


def prepare_paths(cfg: Config) -> None:
    """Check at start what would otherwise fail late: the checkpoint dir and the metrics paths."""
    if cfg.checkpoint_dir:
        check_writable(cfg.checkpoint_dir)
        clean_temporary(cfg.checkpoint_dir)
    for flag, path in (("--metrics-json", cfg.metrics_json), ("--metrics-csv", cfg.metrics_csv),
                       ("--save", cfg.save)):
        if path:
            _check_file(flag, path)
    if cfg.tensorboard:
        _check_dir("--tensorboard", cfg.tensorboard)


def _check_dir(flag: str, path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"{flag} {path!r}: cannot create the directory: {e.strerror or e}") from e
    if not os.access(path, os.W_OK):
        raise CheckpointError(f"{flag} {path!r} is not a writable directory")


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
        if start:
            self.say(f"[{self.label}] resumed from batch {start} ({cfg.checkpoint_dir})")
        if cfg.metrics_csv:
            # resuming: the rows a killed run wrote past its checkpoint are cut (never repeated)
            self.csv = RowFile(cfg.metrics_csv, "step,batch,loss,tokens_per_s,skill,gate\n", "--metrics-csv")
            self.csv.start(self.rows if start else None)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("--tensorboard needs the tensorboard package: pip install 'dni_dist[tensorboard]' "
                                  "(or pip install tensorboard)") from e
            try:
                self.tb = SummaryWriter(cfg.tensorboard)
            except OSError as e:
                raise CheckpointError(f"--tensorboard {cfg.tensorboard!r}: cannot write there: "
                                      f"{e.strerror or e}") from None
        self._tb_done, self._tb_losses = start, []  # TensorBoard: batches logged, losses since
        self.hooks = RunHooks(cfg, spec, worker, start)  # callbacks, keep-best, early stop, MLflow

    def say(self, line: str) -> None:
        """A line on stderr that does not land on the progress bar."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def tokens_per_s(self) -> float:
        return (self.done - self.start) * self.tokens_per_batch / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, batches_done: int) -> None:
        w, cfg = self.worker, self.cfg
        stats = w.synth.stats if w.synth is not None else None
        tok = self.tokens_per_s()
        # w.losses and stats are read from the device when touched: only when a row is written
        while (self.csv is not None or self.tb is not None) and self.rows < len(w.losses):
            i, loss = self.rows, w.losses[self.rows]
            if self.csv is not None:
                self.csv.add(f"{i},{batches_done},{loss:.6g},{tok:.1f},"
                             f"{stats.skill if stats else ''},{stats.gate if stats else ''}\n")
            if self.tb is not None:
                self._tb_losses.append(loss)
            self.rows += 1
        if self.tb is not None and batches_done > self._tb_done and self._tb_losses:
            # one x-axis for train/* and eval/*: batches completed (the mean loss of the steps since)
            b = self._tb_done = batches_done
            self.tb.add_scalar("train/loss", sum(self._tb_losses) / len(self._tb_losses), b)
            self.tb.add_scalar("train/tokens_per_s", tok, b)
            self._tb_losses = []
            if stats is not None:
                self.tb.add_scalar("synth/skill", stats.skill, b)
                self.tb.add_scalar("synth/gate", stats.gate, b)
                self.tb.add_scalar("synth/correlation", stats.correlation, b)
                self.tb.add_scalar("synth/target_rms", float(w.synth.target_ms) ** 0.5, b)
        if self.csv is not None:
            self.csv.flush()
        crossed = batches_done > self.done
        prev, self.done = self.done, batches_done
        if crossed:
            self.hooks.batches_done(prev, batches_done)
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
            self.say(f"[{self.label}] eval at batch {self.done}: " +
                     "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "batch"))
        self.hooks.evaluated(row)
        return row

    def close(self) -> None:
        """Close the bar, the CSV and TensorBoard; never raises (a write failure is a warning)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.csv is not None:
            self.csv.close()
            self.csv = None
        if self.tb is not None:
            try:
                self.tb.close()
            except OSError as e:
                import warnings
                warnings.warn(f"dni_dist: --tensorboard {self.cfg.tensorboard!r}: {e}", RuntimeWarning)
            self.tb = None
        self.hooks.close()


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
    """``--metrics-json``, written atomically (a failure keeps the previous file and says why)."""
    if path:
        write_json(path, m, "--metrics-json")


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


class EndOfRunError(RuntimeError):
    """Something failed after the training loop (the final evaluation, ``--save``, a write, or the
    verdict that the run diverged). Everything that could be written was; ``metrics`` and
    ``model`` are the run's, for the caller to write and report. ``__cause__`` is the first error."""

    def __init__(self, message: str, metrics: dict | None = None, model=None):
        super().__init__(message)
        self.metrics, self.model = metrics, model

    def __reduce__(self):  # crosses process boundaries (Ray) with its metrics
        return (EndOfRunError, (str(self), self.metrics, None))


# A run whose final loss is this many times its own early loss has diverged (finite explosion).
EXPLOSION_FACTOR = float(os.environ.get("DNI_DIST_EXPLOSION_FACTOR", "100"))


def verdict(cfg: Config, worker) -> str:
    """Why a finished run failed although no step raised ('' when it did not): its last ticks had
    no finite chunk, or its loss grew by more than EXPLOSION_FACTOR over its early loss."""
    recent = list(getattr(worker, "_recent", ()))
    last = recent[-max(1, cfg.chunks // max(cfg.workers, 1)):]
    skipped = sum(s for _, s in last)
    if (last and skipped and not sum(r for r, _ in last)) or (not worker.losses and worker.skipped):
        return (f"training failed: every chunk of the last {len(last)} optimizer step(s) had a non-finite loss or "
                f"gradient ({worker.skipped} chunks skipped in all, {len(worker.losses)} steps taken); lower --lr, "
                "set --clip, or check the data")
    losses = worker.losses
    positive = [v for v in losses[:10] if v > 0]  # a first chunk may have no target (loss 0)
    if len(losses) >= 2 and positive and EXPLOSION_FACTOR > 0:
        head = sorted(positive[:3])
        early = min(positive[0], head[len(head) // 2])  # the first step's loss: taken before any update
        tail = losses[-max(1, min(50, len(losses) // 10)):]
        final = sum(tail) / len(tail)
        if final > EXPLOSION_FACTOR * early:
            return (f"training diverged: the loss grew from {early:.4g} at the start to {final:.4g} over the last "
                    f"{len(tail)} step(s) (more than {EXPLOSION_FACTOR:g} times; DNI_DIST_EXPLOSION_FACTOR sets "
                    "it); lower --lr, set --clip, or check the data")
    return ""


def finish(cfg: Config, worker, reporter: "Reporter | None", t0: float, startup_s: float, start: int,
           extra: dict | None = None) -> dict:
    """Metrics of a finished run (rank 0 also evaluates once more and saves the model). A failure
    here (the evaluation, ``--save``, the verdict) does not stop the rest: everything that can be
    written is, then :class:`EndOfRunError` carries the metrics and the first error."""
    wall = time.perf_counter() - t0
    evals, errors = [], []
    if reporter is not None:
        if reporter.spec.evaluate is not None:
            try:
                reporter.evaluate()
            except Exception as e:  # noqa: BLE001 - reported after the rest is written
                errors.append(("the final evaluation", e))
        evals = reporter.evals
        reporter.close()
        if cfg.save:
            try:
                from ..files import save_torch
                save_torch(worker.model.state_dict(), cfg.save, "--save")  # loads into the plain module
                if worker.synth is not None:  # beside it: a fine-tune can start from the trained synthesizer
                    save_torch({"synth": worker.synth.state_dict(), "synth_opt": worker.synth.optimizer.state_dict()},
                               synth_path(cfg.save), "--save")
            except Exception as e:  # noqa: BLE001
                errors.append(("--save", e))
        why = verdict(cfg, worker)
        if why:
            errors.append(("the run", RunFailed(why)))
    m = metrics(cfg, worker, wall, startup_s, cfg.steps - start, {"evals": evals, **(extra or {})})
    if errors:
        m["error"] = "; ".join(_line(what, e) for what, e in errors)
        err = EndOfRunError(m["error"], m, worker.model)
        raise err from errors[0][1]
    return m


def synth_path(save: str) -> str:
    """Where ``--save PATH`` writes the synthesizer: ``model.pt`` -> ``model.synth.pt``."""
    root, ext = os.path.splitext(save)
    return f"{root}.synth{ext or '.pt'}"


class RunFailed(RuntimeError):
    """The run ended, but its losses say it failed (non-finite or exploded)."""


def _line(what: str, e: BaseException) -> str:
    if isinstance(e, (RunFailed, WriteError)):
        return str(e)
    if type(e).__name__ == "SpecError":  # names the spec function itself
        return f"{what} failed: {e}"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{what} failed: {type(e).__name__}: {text}"
