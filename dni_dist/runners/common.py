"""What every runner shares: resume and checkpoints, evaluation, progress, live metrics."""
from __future__ import annotations

import os
import resource
import sys
import time


from ..checkpoint import (REUSE_ENV, CheckpointError, begin_run, check_writable, clean_temporary, foreign, latest,
                          save)
from ..files import WriteError, write_json
from ..config import Config
from ..engine.schedule import Schedule
from .reporting import Reporter  # noqa: F401 - the runners take it from here


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


def worker_run(cfg: Config, spec, worker, transport, start: int, reporter: "Reporter | None", gather=None,
               stop=None):
    """The generator one worker runs from batch ``start`` (or from the tick a mid-run checkpoint
    left, :attr:`Worker.resumed_at`) to the end: the whole run as one schedule, with rank 0's
    reporting, and checkpoints at tick ends that hold what is in flight (nothing drains).

    ``gather(inflight_state)`` collects every worker's in-flight state at a checkpoint: rank 0
    gets the list by rank, the others None (a collective under torch.distributed; in debug mode
    rank 0 reads the other workers, which wait at the same tick's end). ``stop``: early stopping
    (:mod:`.early_stop`); once it stopped, ``stop.end`` is where the run ended."""
    from ..engine.loop import Timers, run_schedule, step_rule
    from ..run_plan import schedule_for
    from ..testing.faults import Faults
    faults = Faults.from_config(cfg)
    if reporter is not None and cfg.progress:
        print(f"[{reporter.label}] {step_rule(cfg.workers, cfg.parallel)}", file=sys.stderr, flush=True)
    worker.timers = Timers()
    gather = gather or (lambda mine: [mine])
    at = worker.resumed_at
    first = at["first_batch"] if at else start
    if first >= cfg.steps:  # resumed from the run's last checkpoint: nothing left to run
        return
    if at and at.get("started", 0) > cfg.steps:
        raise ValueError(f"--resume: the checkpoint was taken with batches up to {at['started'] - 1} in flight "
                         f"(started, partly trained), past --steps {cfg.steps}: resume with --steps >= "
                         f"{at['started']}")
    sched = schedule_for(cfg, spec, first)  # from the synthesizer's options, resolved once (run_plan)
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
                            pending=at["pending"].to(worker.device) if at and at["pending"] is not None else None,
                            stop=stop)
    worker.resumed_at = None
    if cfg.checkpoint_every:  # the last checkpoint, the pipeline drained
        states = gather(worker.inflight_state())
        if reporter is not None:
            save_checkpoint(cfg, spec.name, (stop and stop.end) or cfg.steps, worker, states, None)


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
