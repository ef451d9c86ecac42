"""The synthesizer's regression gradient without autograd, for the default linear synthesizer.

``accumulate`` regresses each cut's prediction ``S(s) = W s + b`` on its target ``d`` with
``sum_i keep_i * mse(S(s_i), d_i)``. For a single linear layer that gradient is two matrix
products, and autograd's engine costs more than they do at the sizes a synthesizer has (~0.15 ms
of a ~0.25 ms update at 256 x 256 on CPU). :func:`add_linear_grads` computes what
``loss.backward()`` would add to ``.grad``, bit for bit: the same kernels in the same order
(``mse_loss``'s backward ``(2 / N) * (p - d) * keep``; ``addmm``'s backward ``g^T s`` for the
weight and ``sum_rows(g)`` for the bias; the cuts' gradients summed last cut first, as autograd's
engine receives them). tests/test_regression.py holds it against autograd.
"""
from __future__ import annotations

import torch
from torch import nn


def exact_for(net: nn.Sequential, device: torch.device) -> bool:
    """Whether :func:`add_linear_grads` is autograd's gradient bit for bit for ``net``: one linear
    layer, float32 or float64, autocast off (under autocast the layer runs in half precision, and
    autograd's backward then differs; ``accumulate`` uses autograd there)."""
    if len(net) != 1 or not isinstance(net[0], nn.Linear) or net[0].weight.dtype not in (torch.float32, torch.float64):
        return False
    try:
        return not torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4: no device argument
        return not (torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled())


@torch.no_grad()
def add_linear_grads(layer: nn.Linear, cuts: list) -> None:
    """Add to ``layer``'s ``.grad`` the gradient of ``sum_i keep_i * mse(pred_i, d_i)``.

    Args:
        layer: the linear layer that made the predictions (``pred_i = layer(s_i)``).
        cuts: ``(s_i, pred_i, d_i, keep_i)`` per cut, in the order the loss summed them; ``keep_i``
            a device bool (0: no gradient from that cut).
    """
    gw = gb = None
    for s, pred, d, keep in reversed(cuts):
        g = (pred - d).mul_(2.0 / pred.numel()).mul_(keep)
        w, b = g.t().mm(s), g.sum(0)
        gw = w if gw is None else gw + w
        gb = b if gb is None else gb + b
    for p, g in ((layer.weight, gw), (layer.bias, gb)):
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)


def loss_of(cuts: list) -> torch.Tensor:
    """The regression loss ``sum_i keep_i * mse(pred_i, d_i)``, summed as ``accumulate`` sums it."""
    loss = None
    for _, pred, d, keep in cuts:
        term = torch.nn.functional.mse_loss(pred, d, reduction="mean") * keep
        loss = term if loss is None else loss + term
    return loss
