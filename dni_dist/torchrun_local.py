"""torchrun for one machine with every listening socket on loopback.

    python -m dni_dist.torchrun_local [torchrun options] -m dni_dist.train [options]   (launch/torchrun.sh)

torchrun's agent hosts two TCP stores (the c10d rendezvous store on ``--rdzv-endpoint`` and the
workers' bootstrap store on a free port). ``torch.distributed.TCPStore`` binds its server to every
interface whatever host it is given, and the stores have no authentication. Here every store
this process hosts listens on a socket bound to 127.0.0.1 beforehand (TCPStore's
``master_listen_fd``), and ``--local-addr 127.0.0.1`` makes the workers' store address loopback
too. Multi-node jobs need the network: call torchrun itself (SECURITY.md).
"""
from __future__ import annotations

import socket
import sys

LOOPBACK = "127.0.0.1"


def loopback_listener(port: int) -> int:
    """A listening TCP socket on 127.0.0.1:``port`` (0: any free port); returns its fd."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((LOOPBACK, port))
    s.listen(1024)
    return s.detach()


def _patch() -> None:
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend, static_tcp_rendezvous

    base = dist.TCPStore
    names = ("host_name", "port", "world_size", "is_master", "timeout", "wait_for_workers", "multi_tenant",
             "master_listen_fd", "use_libuv")

    class LoopbackTCPStore(base):
        """A TCPStore whose server (if this process hosts it) listens on 127.0.0.1 only."""

        def __init__(self, *args, **kwargs):
            kwargs.update(zip(names, args))
            if kwargs.get("is_master") and kwargs.get("master_listen_fd") is None:
                kwargs["master_listen_fd"] = loopback_listener(int(kwargs.get("port") or 0))
            super().__init__(**kwargs)

    dist.TCPStore = LoopbackTCPStore
    c10d_rendezvous_backend.TCPStore = LoopbackTCPStore
    static_tcp_rendezvous.TCPStore = LoopbackTCPStore


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    head = args[:args.index("-m")] if "-m" in args else args  # torchrun's own options
    if not any(a.split("=")[0] in ("--local-addr", "--local_addr") for a in head):
        args[:0] = ["--local-addr", LOOPBACK]
    _patch()
    from torch.distributed.run import main as torchrun
    torchrun(args)


if __name__ == "__main__":
    main()
