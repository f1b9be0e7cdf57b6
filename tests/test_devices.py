"""`cemkit.devices.select_device`: the one rule every stage uses to turn a ``device=`` setting into a torch device."""

import pytest
import torch

from cemkit.devices import select_device
from cemkit.errors import ConfigError


def test_device_settings(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto", local_rank=1) == torch.device("cpu")
    assert select_device(None) == torch.device("cpu")
    with pytest.raises(ConfigError, match="device=cuda:0: CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ConfigError, match="device=tpu7: not a torch device"):
        select_device("tpu7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto", local_rank=1) == torch.device("cuda:1")  # torchrun: this process's GPU
    assert select_device("gpu", local_rank=2) == torch.device("cuda:2")
    assert select_device("cuda:3", local_rank=2) == torch.device("cuda:3")


def test_every_stage_uses_the_one_function():
    from cemkit.curate import classifier
    from cemkit.predict import devices, runner

    assert runner.select_device is select_device
    assert not hasattr(devices, "select_device") and not hasattr(classifier, "_device")
