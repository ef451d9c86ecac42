"""``python -m dni_dist.train``: one entry point for every mode.

    python -m dni_dist.train [options]                                  # debug: K simulated workers
    torchrun --standalone --nproc-per-node K -m dni_dist.train [...]     # one worker per process
    python -m dni_dist.train --backend ray --workers K [--ray-address A] # Ray actors

Parse -> build -> run -> close. ``--compare`` (debug mode) trains TBPTT and DNI on the same data
and prints a table: the README's main job.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from .config import Config, from_args, parser
from .runners.common import write_csv, write_metrics


def run(cfg: Config) -> dict | None:
    """Run ``cfg`` in its mode; returns rank 0's metrics (None on other torchrun ranks)."""
    if cfg.backend == "torch" or int(os.environ.get("RANK", -1)) != -1:  # under torchrun
        import torch.distributed as dist

        from .runners.distributed import init_from_env, run_rank
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and cfg.checkpoint_dir:
            cfg = dataclasses.replace(cfg, resume=True)  # a restarted group continues from its checkpoint
        if "RANK" not in os.environ:
            raise RuntimeError(f"--backend torch must be launched by torchrun: "
                               f"torchrun --standalone --nproc-per-node {cfg.workers} -m dni_dist.train ...")
        cfg = dataclasses.replace(cfg, backend="torch")
        rank, world = init_from_env(cfg)
        try:
            out = run_rank(cfg, rank, world)
        finally:
            dist.destroy_process_group()
        return out if rank == 0 else None
    if cfg.backend == "ray":
        from .runners.ray_actors import run as run_ray
        return run_ray(cfg)
    from .runners.debug import run as run_debug
    return run_debug(cfg)


def summary(m: dict, cfg: Config) -> str:
    tail = m["losses"][-cfg.chunks * 10:]
    return (f"{cfg.mode:>6}  K={cfg.workers}  final loss/chunk {sum(tail) / max(len(tail), 1):.4f}  "
            f"{m['tokens_per_s']:,.0f} tokens/s  {m['wall_s']:.1f}s  peak RSS {m['peak_rss_mb']:.0f} MB")


def main(argv=None) -> int:
    p = parser()
    p.add_argument("--compare", action="store_true",
                   help="debug mode: train TBPTT and DNI with the same seed and data, then print a table")
    ns = p.parse_args(argv)
    compare = ns.__dict__.pop("compare")
    if int(os.environ.get("RANK", -1)) != -1:  # launched by torchrun: one worker per process
        ns.backend = "torch"
    cfg = Config(**vars(ns))
    if compare:
        rows = []
        for mode in ("tbptt", "dni"):
            c = dataclasses.replace(cfg, mode=mode, backend="debug")
            m = run(c)
            rows.append((mode, m))
            print(summary(m, c), flush=True)
        chance = 0.6931 * cfg.truncation
        print("\nmode    loss/chunk (last 10 batches, chance %.2f)   tokens/s" % chance)
        for mode, m in rows:
            tail = m["losses"][-cfg.chunks * 10:]
            print(f"{mode:<7} {sum(tail) / len(tail):>10.4f}{'':>30}{m['tokens_per_s']:>10,.0f}")
        write_metrics(cfg.metrics_json, {mode: m for mode, m in rows})
        return 0
    m = run(cfg)
    if m is not None:
        print(summary(m, cfg), flush=True)
        write_metrics(cfg.metrics_json, m)
        write_csv(cfg.metrics_csv, m["losses"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
