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


@pytest.mark.parametrize("kw,match", [({"aux": True}, "unknown option 'aux'"),
                                      ({"gate_warmpu": 5}, "did you mean 'gate_warmup'"),
                                      ({"discount": 1.5}, "discount"), ({"size": 0}, "size")])
def test_refused_options(kw, match):
    args = {"size": 4, **kw}
    with pytest.raises(ValueError, match=match):
        Synthesizer(**args)


def test_a_text_file_is_a_corpus_and_bad_names_say_what_is_expected(tmp_path):
    from dni_dist.tasks import CharCorpus, load_corpus
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(1000))
    path = tmp_path / "mine.txt"
    path.write_text(text, encoding="utf-8")
    splits = load_corpus(str(path))
    assert splits["train"] + splits["valid"] + splits["test"] == text  # nothing dropped
    assert len(splits["train"]) == int(0.9 * len(text))
    assert CharCorpus(splits).streams("train", 4).shape[0] == 4
    small = tmp_path / "small.txt"
    small.write_text("too short", encoding="utf-8")
    with pytest.raises(ValueError, match=r"has 9 characters; expected at least 10,000"):
        load_corpus(str(small))
    with pytest.raises(ValueError, match=r"'shakespeare', 'ptb' or the path of a UTF-8 text file; got 'nope.txt'"):
        load_corpus("nope.txt")


