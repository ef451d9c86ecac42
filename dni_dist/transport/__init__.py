"""How bytes move between workers. Only :mod:`.torch_dist` imports torch.distributed."""
from .base import Message, MessageError, Transport

__all__ = ["Message", "MessageError", "Transport"]
