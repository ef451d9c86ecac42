"""The form of an RNN state: read it off a state, and check a state against it with errors that
say what was wrong and what was expected. Plain PyTorch; used by :class:`dni_dist.Synthesizer`."""
from __future__ import annotations

import torch

from . import targets as tg


def describe(state) -> str:
    if torch.is_tensor(state):
        return f"a Tensor of shape {tuple(state.shape)}"
    if isinstance(state, (tuple, list)):
        return f"a {type(state).__name__} of {len(state)}: (" + ", ".join(describe(t) for t in state) + ")"
    return type(state).__name__


def infer_form(state) -> tuple[int, bool, int]:
    """``(size, is_lstm, num_layers)`` of a state an RNN returned: an ``(h, c)`` tuple is an
    LSTM's; ``(batch, H)`` tensors are one layer (cells), ``(layers, batch, H)`` several."""
    if isinstance(state, (tuple, list)) and len(state) == 2:
        is_lstm = True
    elif torch.is_tensor(state):
        is_lstm = False
    else:
        raise TypeError(f"the RNN state must be a tensor or an (h, c) tuple; got {describe(state)}")
    first = tg.as_tuple(state)[0]
    if not torch.is_tensor(first) or first.dim() not in (2, 3):
        raise ValueError(f"the RNN state must hold (batch, H) or (num_layers, batch, H) tensors; got {describe(state)}")
    return int(first.shape[-1]), is_lstm, 1 if first.dim() == 2 else int(first.shape[0])


def check_form(state, size: int, is_lstm: bool, num_layers: int, name: str = "state") -> None:
    """Raise a clear error unless ``state`` is an RNN state of this form."""
    if is_lstm:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            got = f"a Tensor of shape {tuple(state.shape)}" if torch.is_tensor(state) else type(state).__name__
            raise TypeError(f"{name}: Synthesizer(is_lstm=True) expects the LSTM state as a tuple (h, c); got {got}")
    elif not torch.is_tensor(state):
        got = f"a tuple of {len(state)}" if isinstance(state, (tuple, list)) else type(state).__name__
        raise TypeError(f"{name}: Synthesizer(is_lstm=False) expects one state tensor; got {got} "
                        "(for an LSTM's (h, c) create Synthesizer(..., is_lstm=True))")
    parts = tg.as_tuple(state)
    for label, t in zip(("h", "c"), parts):
        if not torch.is_tensor(t) or not t.is_floating_point():
            raise TypeError(f"{name}: {label} must be a floating-point tensor; got {type(t).__name__}"
                            + (f" of dtype {t.dtype}" if torch.is_tensor(t) else ""))
        if t.dim() not in (2, 3):
            raise ValueError(f"{name}: {label} has shape {tuple(t.shape)}; expected (batch, {size}) "
                             f"or (num_layers={num_layers}, batch, {size})")
        if t.shape[-1] != size:
            raise ValueError(f"{name}: {label} has last dimension {t.shape[-1]} but Synthesizer(size={size}) "
                             f"expects {size}")
        layers = 1 if t.dim() == 2 else t.shape[0]
        if layers != num_layers:
            if layers == 2 * num_layers:
                raise ValueError(f"{name}: {label} has {layers} = 2 x num_layers layers, as a bidirectional "
                                 "RNN's state does; bidirectional RNNs are not supported (truncated BPTT with "
                                 "a backward direction is not meaningful). If it is a unidirectional "
                                 f"{layers}-layer RNN, create Synthesizer(..., num_layers={layers})")
            raise ValueError(f"{name}: {label} has {layers} layer(s) but the Synthesizer was built with "
                             f"num_layers={num_layers}")
    if len(parts) == 2 and parts[0].shape != parts[1].shape:
        raise ValueError(f"{name}: h has shape {tuple(parts[0].shape)} but c has {tuple(parts[1].shape)}; "
                         "they must match")
