"""One transport implementation per path behind the Protocol, chosen by the factory (issue 29, goal 4)."""
import datetime
import os

import pytest
import torch

from dni_dist.transport.backend import BackendHandle, BackendMessages, BackendSum
from dni_dist.transport.base import Transport
from dni_dist.transport.local import LocalHub, LocalTransport
from dni_dist.transport.process import ProcessTransport
from dni_dist.transport.shm_messages import MailboxMessages
from dni_dist.transport.shm_sums import CheckedHandle, CheckedSum, FlagsHandle, FlagsSum

from conftest import free_port, spawn_ranks

PROTOCOL = sorted(n for n, v in vars(Transport).items() if callable(v) and not n.startswith("_"))


def test_each_transport_class_has_the_protocols_methods():
    assert PROTOCOL == ["all_reduce_sum", "close", "finish", "recv", "send", "start_all_reduce"]
    for cls in (LocalTransport, ProcessTransport):
        assert [n for n in PROTOCOL if not callable(getattr(cls, n, None))] == [], cls
    assert isinstance(LocalHub(2).transports()[1], Transport)


@pytest.mark.parametrize("cls,methods", [(BackendMessages, ("send", "recv", "close")),
                                         (MailboxMessages, ("send", "recv", "close")),
                                         (BackendSum, ("start", "close")), (FlagsSum, ("start", "close")),
                                         (CheckedSum, ("start", "close")), (BackendHandle, ("finish",)),
                                         (FlagsHandle, ("finish",)), (CheckedHandle, ("finish",))])
def test_each_path_has_the_interface_the_process_transport_calls(cls, methods):
    assert [m for m in methods if not callable(getattr(cls, m, None))] == []


@pytest.mark.timeout(60)
def test_one_process_gets_the_backend_paths_and_they_sum():
    import torch.distributed as dist

    from dni_dist.transport.factory import process_transport
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=20))
    try:
        with pytest.raises(ValueError, match="reduce='gpu': expected 'auto', 'shared-memory' or 'backend'"):
            process_transport(5.0, reduce="gpu")
        tr = process_transport(5.0)
        assert isinstance(tr, Transport)
        assert (type(tr.messages), type(tr.sums)) == (BackendMessages, BackendSum)
        assert tr.all_reduce_sum(torch.arange(5.0)).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
        tr.close()
    finally:
        dist.destroy_process_group()


TERMS = (1.0, 1e8, -1e8)  # float32: added in rank order 0, in other orders 1


def _checked_worker(rank, world, port, q):
    import torch.distributed as dist

    from dni_dist.transport import shm
    from dni_dist.transport.base import Message
    from dni_dist.transport.factory import process_transport
    torch.set_num_threads(1)
    shm.ordered_stores = lambda: False  # as on a host whose stores other cores may see out of order
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        tr = process_transport(20.0, reduce="shared-memory")
        paths = (type(tr.messages).__name__, type(tr.sums).__name__)
        msg = Message("state", 0, rank, ((2, 3),), torch.float32)
        tr.send((rank + 1) % world, msg, [torch.full((2, 3), float(rank))])
        got = tr.recv((rank - 1) % world, Message("state", 0, (rank - 1) % world, ((2, 3),), torch.float32))
        total = tr.all_reduce_sum(torch.full((10,), TERMS[rank]))
        try:
            tr.all_reduce_sum(torch.ones(8 - rank * rank))  # 8, 7, 4: within the segment, only the sum's check sees it
            bad = "no error"
        except Exception as e:  # noqa: BLE001 - the test inspects it
            bad = f"{type(e).__name__}: {e}"
        q.put((rank, paths, got[0].tolist(), total.tolist(), bad))
    except Exception as e:  # noqa: BLE001 - the test inspects it
        q.put((rank, type(e).__name__, str(e), None, None))
    finally:
        q.close()
        q.join_thread()
        os._exit(0)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="needs /dev/shm")
def test_without_ordered_stores_sums_check_with_an_all_reduce_and_messages_use_the_backend():
    """Not x86: the slots' sum with a 3-value all-reduce as its barrier (rank order: debug mode's
    bits), messages over the backend, and a size the workers disagree on is a MessageError."""
    world = 3
    local = LocalHub(world).transports()
    handles = [t.start_all_reduce(torch.full((10,), v)) for t, v in zip(local, TERMS)]
    want = [t.finish(h) for t, h in zip(local, handles)][0].tolist()
    for rank, paths, message, total, bad in spawn_ranks(_checked_worker, world):
        assert paths == ("BackendMessages", "CheckedSum"), (rank, message)
        assert message == [[float((rank - 1) % world)] * 3] * 2
        assert total == want
        assert bad.startswith("MessageError: ") and "the workers' gradient sums disagree" in bad
        assert "count, sizes, sequence numbers = [3, 19, 3]" in bad
