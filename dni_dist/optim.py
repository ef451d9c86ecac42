"""The default optimizer: Adam, fused where this torch has the kernel for the parameters' device."""
from __future__ import annotations

import torch
import torch.optim.optimizer as _torch_optimizer  # the global step hooks


def adam(params, lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr=lr)``, fused when possible: one kernel over all tensors
    instead of a Python loop (on CPU, 3-7x faster for the sizes here; ``benchmarks/cost_per_update.py``
    prints both). torch < 2.4 has no CPU kernel and refuses ``fused=True``: then the plain loop."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def step(optimizer: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    """``optimizer.step()`` where ``ok`` (a device bool) holds, without reading it.

    A fused Adam whose state exists is stepped by its kernel directly (``torch._fused_adam_``, the
    call ``Adam.step`` ends in; bit for bit the same update and step counts: the counts go up by
    one, and back where ``ok`` is False, as with a GradScaler's ``found_inf``). That skips the
    optimizer's Python bookkeeping, which on small synthesizers costs more than the update itself
    (~0.15 ms of a ~0.03 ms kernel at 256 x 256 on CPU). The first step (it creates the state),
    and any other optimizer or setting, goes through ``step()``: a fused Adam is told
    ``found_inf``; another optimizer reads ``ok`` once."""
    if ok.dtype != torch.bool:
        raise TypeError(f"optim.step: ok must be a bool tensor, got {ok.dtype}")
    group = optimizer.param_groups[0] if len(optimizer.param_groups) == 1 else None
    if _direct(optimizer, group):
        params = [p for p in group["params"] if p.grad is not None]
        if params and all("step" in optimizer.state.get(p, ()) for p in params):
            states = [optimizer.state[p] for p in params]
            steps = [s["step"] for s in states]
            found_inf = (~ok).float()
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                               [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=group["lr"],
                               beta1=group["betas"][0], beta2=group["betas"][1], weight_decay=group["weight_decay"],
                               eps=group["eps"], maximize=False, grad_scale=None, found_inf=found_inf)
            torch._foreach_sub_(steps, [found_inf] * len(steps))
            return
    if all(g.get("fused") for g in optimizer.param_groups):  # the groups' setting (a loaded state may change it)
        optimizer.found_inf = (~ok).float()  # what GradScaler uses: skips the step, keeps the counters
        optimizer.step()
    elif bool(ok):  # an optimizer without found_inf: one read
        optimizer.step()


def _direct(optimizer, group) -> bool:
    return (type(optimizer) is torch.optim.Adam and group is not None and group.get("fused")
            and hasattr(torch, "_fused_adam_") and not torch.is_tensor(group["lr"])
            and not group["amsgrad"] and not group["maximize"] and not group.get("decoupled_weight_decay")
            and not group.get("differentiable") and getattr(optimizer, "grad_scale", None) is None
            and "step" not in vars(optimizer)  # a step wrapped on the instance (a scheduler, a user) is theirs
            and not optimizer._optimizer_step_pre_hooks
            and not optimizer._optimizer_step_post_hooks
            and not getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
            and not getattr(_torch_optimizer, "_global_optimizer_post_hooks", None))
