"""The default optimizer: Adam, fused where this torch has the kernel for the parameters' device."""
from __future__ import annotations

import torch


def adam(params, lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr=lr)``, fused when possible: one kernel over all tensors
    instead of a Python loop (on CPU, 3-7x faster for the sizes here; ``benchmarks/cost_per_update.py``
    prints both). torch < 2.4 has no CPU kernel and refuses ``fused=True``: then the plain loop."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)
