"""Bad input gets a clear error naming the argument and the expected form."""
import pytest
import torch
from torch import nn

from dni_dist import Synthesizer


def _state(*shape):
    return torch.randn(*shape, requires_grad=True) * 1.0


def test_wrong_size():
    with pytest.raises(ValueError, match=r"last dimension 5 .*size=8"):
        Synthesizer(8, is_lstm=False).backward_synthetic(_state(1, 2, 5))


def test_tensor_where_tuple_expected_and_reverse():
    with pytest.raises(TypeError, match=r"is_lstm=True\) expects the LSTM state as a tuple \(h, c\)"):
        Synthesizer(4, is_lstm=True).backward_synthetic(_state(1, 2, 4))
    with pytest.raises(TypeError, match=r"is_lstm=False\) expects one state tensor"):
        Synthesizer(4, is_lstm=False).backward_synthetic((_state(1, 2, 4), _state(1, 2, 4)))


def test_non_scalar_loss():
    with pytest.raises(ValueError, match=r"loss must be a scalar .*\(2, 4\)"):
        Synthesizer(4, is_lstm=False).backward_synthetic(_state(1, 2, 4), torch.ones(2, 4, requires_grad=True))


def test_state_without_graph():
    with pytest.raises(ValueError, match="hn carries no graph"):
        Synthesizer(4, is_lstm=False).backward_synthetic(torch.randn(1, 2, 4))


def test_bidirectional():
    with pytest.raises(ValueError, match="bidirectional"):
        Synthesizer.for_rnn(nn.LSTM(3, 4, bidirectional=True))
    rnn = nn.GRU(3, 4, bidirectional=True)
    _, h = rnn(torch.randn(2, 2, 3))
    with pytest.raises(ValueError, match="bidirectional"):
        Synthesizer(4, is_lstm=False, num_layers=1).backward_synthetic(h)


def test_layers_mismatch():
    with pytest.raises(ValueError, match=r"3 layer\(s\) but the Synthesizer was built with num_layers=1"):
        Synthesizer(4, is_lstm=False, num_layers=1).backward_synthetic(_state(3, 2, 4))


@pytest.mark.parametrize("kw,match", [({"aux": True}, "aux=True"), ({"allow_backwarding": True}, "allow_backwarding"),
                                      ({"discount": 1.5}, "discount"), ({"size": 0}, "size")])
def test_refused_options(kw, match):
    args = {"size": 4, **kw}
    with pytest.raises(ValueError, match=match):
        Synthesizer(**args)
