"""The shared-memory gradient sum as a reduce-scatter + all-gather (issue 28, goal 3): worker r adds
its 1/K slice of every worker's buffer, in rank order, into a shared result that every worker then
copies; every element is added in rank order, so the bits are debug mode's for any K."""
import os

import pytest
import torch

from dni_dist.transport.local import LocalHub
from dni_dist.transport.shm import SharedSlots, ordered_stores

from conftest import spawn_ranks

ORDER = (1e8, 1.0, -1e8, 1.0)  # float32: rank order gives 1, other orders 0 or 2
SIZES = (10, 67, 1000)  # fewer values than workers x 16, not a multiple of 16, several lines each


@pytest.mark.parametrize("world", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 64, 1000, 1001])
def test_each_worker_reduces_one_contiguous_slice_and_the_slices_cover_the_buffer(world, n):
    cuts = [SharedSlots(r, world, "unused", barrier=lambda v: v)._bounds(n, r) for r in range(world)]
    assert cuts[0][0] == 0 and cuts[-1][1] == n
    for (lo, hi), (lo2, _) in zip(cuts, cuts[1:]):
        assert lo <= hi == lo2  # contiguous, in rank order
    assert all(lo % 16 == 0 or lo == n for lo, _ in cuts)  # no cache line written by two workers
    if n >= 16 * world:
        assert max(hi - lo for lo, hi in cuts) - min(hi - lo for lo, hi in cuts) <= 32  # balanced


def _worker(rank, world, port, q):
    import datetime

    import torch.distributed as dist

    from dni_dist.transport.factory import process_transport
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        tr = process_transport(20.0, reduce="shared-memory")
        out = []
        for n in SIZES:
            got = tr.all_reduce_sum(torch.full((n,), ORDER[rank % 4]) + torch.arange(n) * (rank + 1))
            slots, seq = tr.sums.slots, tr.sums.slots._seq - 1
            out.append((got.tolist(), slots._result[seq % 2, :n].tolist(), slots._flags[:, 3].tolist()))
        q.put((rank, "ok", out))
    except Exception as e:  # noqa: BLE001 - the test inspects it
        q.put((rank, type(e).__name__, str(e)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not ordered_stores() or not os.access("/dev/shm", os.W_OK), reason="needs x86 and /dev/shm")
def test_four_workers_sum_slices_in_rank_order_with_debug_modes_bits():
    world = 4
    hub = LocalHub(world)
    local = hub.transports()
    want = []
    for n in SIZES:
        hs = [t.start_all_reduce(torch.full((n,), ORDER[r % 4]) + torch.arange(n) * (r + 1))
              for r, t in enumerate(local)]
        want.append([t.finish(h) for t, h in zip(local, hs)][0].tolist())
    assert want[0][0] == 1.0  # rank order tells itself apart
    got = spawn_ranks(_worker, world)
    for rank, kind, out in got:
        assert kind == "ok", (rank, out)
        for i, (total, shared, reduced) in enumerate(out):
            assert total == want[i]            # debug mode's bits on every worker
            assert shared == want[i]           # the shared result the slices were added into
            assert reduced == [i + 1] * world  # every worker added its slice of sum i
