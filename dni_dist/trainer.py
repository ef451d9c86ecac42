"""The trainer features around the engine's optimizer step: a learning-rate schedule, mixed
precision, gradient accumulation (one :class:`Trainer` per worker), and rank 0's callbacks,
keep-best, early stopping and MLflow logging (one :class:`RunHooks` per run, held by the Reporter).

    --lr-schedule cosine --warmup-steps 100   # or Spec(lr_schedule=lambda step: factor)
    --precision bf16                          # autocast around the model's forward and loss
    --grad-accum 4                            # one optimizer step per 4 steps' gradients (their mean)
    --keep-best valid_bpc --early-stop 5      # best model to model.best.pt; stop after 5 evals without gain
    --mlflow runs/                            # MLflow local file store (pip install 'dni_dist[mlflow]')

Spec(on_batch_end=f, on_eval=g): called on rank 0 only (under Ray, in rank 0's actor process),
``f(batch_index, metrics)`` after every batch and ``g(batch_index, metrics)`` after every
evaluation; ``batch_index`` is the 0-based index of the last batch trained (batches completed - 1).

Gradient accumulation and the schedule count optimizer steps as the engine takes them (one per
tick with data); bf16 autocast covers the model's forward and loss, the synthesizer stays fp32;
fp16 is refused (it would need loss scaling). Early stopping runs in every launch mode: rank 0
decides at its evaluations and every rank learns it there (:mod:`dni_dist.runners.early_stop`).
"""
from __future__ import annotations

import math
import os

import torch

from . import targets as tg
from .files import save_torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}



def cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps (0 at step 0), then a cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return step / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


class Trainer:
    """A worker's optimizer step: gradient accumulation, clipping, the step, the schedule; and
    the autocast around its forward. Every replica holds one and takes the same decisions."""

    def __init__(self, settings, spec, worker):
        self.settings, self.params, self.opt = settings, worker.params, worker.opt
        self.dtype = PRECISIONS[settings.precision]
        self.like = worker.like
        self.accum = None  # the sum of the gradients of the steps accumulated so far
        self.count = 0
        self.sched = None
        factor = getattr(spec, "lr_schedule", None)
        if factor is None and settings.cosine_steps is not None:
            factor = lambda s, n=settings.cosine_steps, w=settings.warmup_steps: cosine(s, n, w)  # noqa: E731
        if factor is not None:
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)

    # ---------------------------------------------------------------- precision
    def forward_fns(self, model, loss_fn):
        """``(model, loss)`` to run a chunk with: the originals in fp32; under autocast otherwise,
        the state returned in the dtype the boundary states have (the synthesizer stays fp32)."""
        if self.dtype is None:
            return model, loss_fn
        device = next(model.parameters()).device.type
        dtypes = [t.dtype for t in tg.as_tuple(self.like)]

        def run_model(x, state):
            with torch.autocast(device, dtype=self.dtype):
                out, end = model(x, state)
            end = tg.like([t.to(d) for t, d in zip(tg.as_tuple(end), dtypes)], end)
            return out, end

        def run_loss(out, y, mask):
            with torch.autocast(device, dtype=self.dtype):
                loss = loss_fn(out, y, mask)
            return loss.float() if torch.is_tensor(loss) else loss

        return run_model, run_loss

    # ---------------------------------------------------------------- the step
    def step(self, grads: torch.Tensor, ok: torch.Tensor) -> None:
        """Take the tick's model gradient (the parameters' ``.grad`` are views of ``grads``) and
        ``ok``, a device bool: the tick ran chunks and its gradient is finite. Steps once every
        ``grad_accum`` such ticks on their mean.

        The default path (no accumulation, no schedule, a fused optimizer) reads nothing back to
        the host: the fused step skips itself on the device when ``ok`` is false (``found_inf``,
        as GradScaler does). Accumulation, a schedule or another optimizer must know whether the
        tick counts: one read a tick."""
        m = self.settings.grad_accum
        if m == 1 and self.sched is None and getattr(self.opt, "defaults", {}).get("fused"):
            self._clip()
            self.opt.found_inf = (~ok).float()
            self.opt.step()
            return
        if not bool(ok):
            return
        if m > 1:
            if self.accum is None:
                self.accum = torch.zeros_like(grads)
            self.accum.add_(grads)
            self.count += 1
            if self.count < m:
                return
            grads.copy_(self.accum).div_(m)
            self.accum.zero_()
            self.count = 0
        self._clip()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()

    def _clip(self) -> None:
        if self.settings.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.clip)

    def state_dict(self) -> dict:
        out = {}
        if self.sched is not None:
            out["lr_sched"] = self.sched.state_dict()
        if self.settings.grad_accum > 1:
            out["accum"] = {"count": self.count, "sum": self.accum if self.accum is not None else torch.zeros(0)}
        return out

    def load_state_dict(self, sd: dict) -> None:
        if self.sched is not None and "lr_sched" in sd:
            self.sched.load_state_dict(sd["lr_sched"])
        if "accum" in sd:
            self.count = int(sd["accum"]["count"])
            self.accum = sd["accum"]["sum"].clone() if sd["accum"]["sum"].numel() else None


class RunHooks:
    """Rank 0's per-run hooks, called by the Reporter: the spec's callbacks, keep-best, early
    stopping and MLflow."""

    def __init__(self, cfg, spec, worker, start: int):
        self.cfg, self.spec, self.worker = cfg, spec, worker
        self.rows = len(worker.losses) if (spec.on_batch_end is not None or cfg.mlflow) else 0
        self.bad_evals = 0
        self.stop = ""  # why early stopping ends the run ('' while it goes on): every rank learns it
        self.best = None
        self.metric, self.sign = cfg.keep_best, 1.0
        if self.metric.startswith("max:"):
            self.metric, self.sign = self.metric[4:], -1.0
        self.best_path = cfg.best_path or best_sibling(cfg.save)
        if self.metric and start > 0 and os.path.exists(self.best_path):  # a resumed run keeps its best
            saved = torch.load(self.best_path, weights_only=True)
            if isinstance(saved, dict) and saved.get("metric") == cfg.keep_best:
                self.best = float(saved["value"])
        self.mlflow = None
        if cfg.mlflow:
            try:
                import mlflow
            except ImportError:
                raise ImportError("--mlflow needs the mlflow package: pip install 'dni_dist[mlflow]'") from None
            # a directory is a local file store (offline; mlflow >= 3.7 asks for this opt-in), a URI is used as is
            uri = cfg.mlflow if ":" in cfg.mlflow else "file:" + os.path.abspath(cfg.mlflow)
            if uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(spec.name or "dni_dist")
            mlflow.start_run()
            mlflow.log_params({k: str(v)[:500] for k, v in cfg.to_dict().items()})
            self.mlflow = mlflow

    def batches_done(self, prev: int, done: int) -> None:
        """Batches ``prev .. done-1`` are complete: the spec's ``on_batch_end`` for each, and the
        mean loss of the steps since the last call to MLflow. Reads the losses (a host read) only
        when one of them is there to take them."""
        if self.spec.on_batch_end is None and self.mlflow is None:
            return
        losses = self.worker.losses[self.rows:]
        self.rows = len(self.worker.losses)
        loss = sum(losses) / len(losses) if losses else float("nan")
        for b in range(prev, done):
            if self.spec.on_batch_end is not None:
                self.spec.on_batch_end(b, {"loss": loss, "batches_done": b + 1})
        if self.mlflow is not None and losses:
            self.mlflow.log_metric("train_loss", loss, step=done)

    def evaluated(self, row: dict) -> None:
        """After an evaluation (``row``: ``batch`` = batches done, and the spec's metrics). Sets
        :attr:`stop` when early stopping ends the run here (never at the final one); the runner's
        :class:`dni_dist.runners.early_stop.EarlyStop` tells every rank."""
        done = row["batch"]
        metrics = {k: v for k, v in row.items() if k != "batch"}
        if self.spec.on_eval is not None:
            self.spec.on_eval(done - 1, metrics)
        if self.mlflow is not None:
            self.mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items()}, step=done)
        if not self.metric:
            return
        if self.metric not in metrics:
            raise ValueError(f"--keep-best {self.cfg.keep_best!r}: the evaluation has no metric {self.metric!r}; "
                             f"it returned {', '.join(sorted(metrics)) or 'nothing'}")
        value = self.sign * metrics[self.metric]
        if self.best is None or value < self.best:
            self.best, self.bad_evals = value, 0
            w = self.worker
            state = {"model": w.model.state_dict(), "metric": self.cfg.keep_best, "value": value, "batch": done}
            if w.synth is not None:
                state["synth"] = w.synth.state_dict()
            save_torch(state, self.best_path, "--keep-best")
        else:
            self.bad_evals += 1
            if self.cfg.early_stop and self.bad_evals >= self.cfg.early_stop and done < self.cfg.steps \
                    and not self.stop:
                self.stop = (f"early stop at batch {done}: {self.metric} did not improve for "
                             f"{self.bad_evals} evaluations (best {self.sign * self.best:.6g})")

    def close(self) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run()
            self.mlflow = None


def best_sibling(path: str) -> str:
    """``model.pt`` -> ``model.best.pt`` (``''`` stays ``''``)."""
    if not path:
        return ""
    root, ext = os.path.splitext(path)
    return f"{root}.best{ext or '.pt'}"
