import pytest
import torch

from engine import device as device_module
from engine.errors import UserError


@pytest.fixture(autouse=True)
def fresh_choice():
    device_module.pick_device.cache_clear()
    yield
    device_module.pick_device.cache_clear()


def test_environment_variable_overrides_choice(monkeypatch):
    monkeypatch.setenv("MINILAB_DEVICE", "cpu")
    assert device_module.pick_device() == torch.device("cpu")
    assert device_module.device_report()["chosen_by"] == "MINILAB_DEVICE"


def test_automatic_choice_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("MINILAB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_module.pick_device().type == "cpu"
    device_module.pick_device.cache_clear()
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device_module.pick_device().type == "mps"
    device_module.pick_device.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_module.pick_device().type == "cuda"


@pytest.mark.parametrize("name", ["tpu", "not a device", "cuda:99"])
def test_unusable_devices_are_refused(name):
    if name == "cuda:99" and torch.cuda.is_available() and torch.cuda.device_count() > 99:
        pytest.skip("this machine has 100 GPUs")
    with pytest.raises(UserError):
        device_module.resolve_device(name)


def test_cuda_refused_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        device_module.resolve_device("cuda")


def test_report_has_memory(monkeypatch):
    monkeypatch.setenv("MINILAB_DEVICE", "cpu")
    report = device_module.device_report()
    assert report["device"] == "cpu"
    assert report["process_memory_mb"] is None or report["process_memory_mb"] > 10
