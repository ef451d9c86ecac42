"""The process transport's module before issue 29 split it into one module per path; kept so that
``TorchDistTransport(timeout_s, device, reduce)`` and the header helpers import as before.
New code calls :func:`.factory.process_transport` and imports from :mod:`.wire`.
"""
from __future__ import annotations

import torch

from .base import Message, MessageError, Transport
from .factory import process_transport
from .shm import alive as _alive
from .wire import DTYPES, HEADER, KINDS, SENTINEL
from .wire import decode as _decode
from .wire import encode as _encode

__all__ = ["TorchDistTransport", "Message", "MessageError", "SENTINEL", "HEADER", "KINDS", "DTYPES",
           "_encode", "_decode", "_alive"]


def TorchDistTransport(timeout_s: float, device: torch.device | str = "cpu",  # noqa: N802 - the former class
                       reduce: str = "auto") -> Transport:
    """This process's transport: :func:`.factory.process_transport`."""
    return process_transport(timeout_s, device, reduce)
