"""Rank 0's view of a run: progress, live metrics (CSV, TensorBoard), evaluations and the
per-run hooks (callbacks, keep-best, early stopping, MLflow)."""
from __future__ import annotations

import sys
import time

import torch

from ..checkpoint import CheckpointError
from ..config import Config
from ..files import RowFile
from ..trainer import RunHooks


class Reporter:
    """Rank 0's view of the run: progress (a bar on a terminal, else a line every ``log_every``
    seconds), rows appended to ``--metrics-csv`` as they happen, TensorBoard scalars, and the
    spec's ``evaluate`` every ``eval_every`` batches."""

    def __init__(self, cfg: Config, spec, worker, start: int, label: str = ""):
        self.cfg, self.spec, self.worker, self.start = cfg, spec, worker, start
        self.label = label or f"{cfg.mode} K={cfg.workers}"
        self.t0 = time.perf_counter()
        self.done, self.rows, self.evals = start, len(worker.losses), []
        self.steps = cfg.steps  # where the run ends (earlier after an early stop: end_at)
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
                and batches_done < self.steps:
            self.evaluate()
        now = time.perf_counter()
        if self.bar is not None and crossed:
            self.bar.update(batches_done - self.bar.n)
            if now - self._last_bar > 0.5:
                self._last_bar = now
                self.bar.set_postfix_str(self._summary(tok, stats), refresh=False)
        elif self.bar is None and cfg.progress and (now - self._last_line >= cfg.log_every or
                                                    batches_done == self.steps and crossed):
            self._last_line = now
            print(f"[{self.label}] batch {batches_done}/{self.steps}  {self._summary(tok, stats)}  "
                  f"{now - self.t0:.0f}s", file=sys.stderr, flush=True)

    def end_at(self, batch: int) -> None:
        """An early stop: the run ends at ``batch`` (no evaluation before; the final one after)."""
        self.steps = batch
        if self.bar is not None:
            self.bar.total = batch
            self.bar.refresh()

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
