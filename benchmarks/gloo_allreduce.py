"""ms per gradient sum of a float32 buffer between K local processes: what one exact tick pays for
its gradient buffer, without the training around it.

    torchrun --standalone --nproc-per-node 2 benchmarks/gloo_allreduce.py                # gloo's all-reduce
    torchrun --standalone --nproc-per-node 4 benchmarks/gloo_allreduce.py --reduce auto  # the engine's sum

``--reduce backend`` (the default) times ``dist.all_reduce``; ``--reduce auto`` or
``shared-memory`` times the engine's transport (``process_transport(...).start_all_reduce`` +
``finish``), which on one x86 host sums through /dev/shm: each worker adds its 1/K slice of every
buffer in rank order, then every worker copies the whole sum (reduce-scatter + all-gather).
Rank 0 prints one row per size: MB, the median ms of ``--reps`` sums, MB/s. Run it alone on the
machine for a number you publish.
"""
import argparse
import statistics
import time

import torch
import torch.distributed as dist


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reduce", default="backend", choices=["backend", "auto", "shared-memory"])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16_384, 262_144, 530_000, 1_060_000])
    args = ap.parse_args()
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.reduce == "backend":
        def sum_(x):
            dist.all_reduce(x)
            return x
    else:
        from dni_dist.transport.factory import process_transport
        tr = process_transport(60.0, "cpu", args.reduce)

        def sum_(x):
            return tr.finish(tr.start_all_reduce(x))
    for n in args.sizes:
        x = torch.full((n,), float(rank + 1))
        for _ in range(5):
            got = sum_(x.clone())
        assert float(got[0]) == world * (world + 1) / 2, float(got[0])
        times = []
        for _ in range(args.reps):
            y = x.clone()
            t = time.perf_counter()
            sum_(y)
            times.append(time.perf_counter() - t)
        dt = statistics.median(times)
        if rank == 0:
            print(f"K={world} {args.reduce:>13}  {n * 4 / 1e6:5.2f} MB  {dt * 1e3:6.2f} ms  "
                  f"{n * 4 / dt / 1e6:5.0f} MB/s", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
