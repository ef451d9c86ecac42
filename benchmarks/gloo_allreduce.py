"""ms per gloo all-reduce of a float32 buffer between K local processes (what one exact tick pays
for its gradient buffer, without the training around it).

    torchrun --standalone --nproc-per-node 2 benchmarks/gloo_allreduce.py
"""
import time

import torch
import torch.distributed as dist


def main():
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    for n in (16_384, 262_144, 530_000, 1_060_000):
        x = torch.ones(n)
        for _ in range(5):
            dist.all_reduce(x)
        t = time.perf_counter()
        for _ in range(40):
            dist.all_reduce(x)
        dt = (time.perf_counter() - t) / 40
        if dist.get_rank() == 0:
            print(f"{n * 4 / 1e6:5.2f} MB  {dt * 1e3:6.2f} ms  {n * 4 / dt / 1e6:5.0f} MB/s", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
