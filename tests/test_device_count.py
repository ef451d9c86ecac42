"""``--device cuda`` with more local ranks than GPUs is one line naming both numbers (issue 28, goal 4)."""
import pytest
import torch

from dni_dist.config import Config
from dni_dist.runners import distributed


@pytest.mark.parametrize("gpus,available", [(1, True), (0, False)])
def test_more_ranks_than_gpus_is_a_one_line_error(gpus, available, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device must not be reached"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=rf"runs 2 ranks but sees {gpus} GPU\(s\)") as e:
        distributed.init_from_env(Config(device="cuda", workers=2, chunks=4))
    assert "\n" not in str(e.value)


def test_one_rank_per_gpu_gets_its_own(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert distributed.cuda_device(3, 4) == 3
