import pytest
import torch

from engine import device as device_module
from engine.errors import UserError


@pytest.fixture(autouse=True)
def fresh_choice():
    device_module.chosen_device.cache_clear()
    yield
    device_module.chosen_device.cache_clear()


def test_environment_variable_overrides_choice(monkeypatch):
    monkeypatch.setenv("MINILAB_DEVICE", "cpu")
    assert device_module.pick_device() == torch.device("cpu")
    assert device_module.device_report()["chosen_by"] == "MINILAB_DEVICE"


def test_automatic_choice_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("MINILAB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_module.pick_device().type == "cpu"
    device_module.chosen_device.cache_clear()
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device_module.pick_device().type == "mps"
    device_module.chosen_device.cache_clear()
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


def _in_thread(function):
    """Run `function` in a new thread and return its result (each thread has its own PyTorch thread count)."""
    import threading

    result = {}
    worker = threading.Thread(target=lambda: result.update(value=function()))
    worker.start()
    worker.join(30)
    return result["value"]


def test_request_threads_apply_to_the_calling_thread_only():
    def request() -> tuple[int, int]:
        torch.set_num_threads(2)
        before = torch.get_num_threads()
        device_module.use_request_threads()
        return before, torch.get_num_threads()

    main_threads = torch.get_num_threads()
    assert _in_thread(request) == (2, device_module.REQUEST_THREADS)
    assert torch.get_num_threads() == main_threads  # the server's other threads (a training job) keep theirs


def test_every_step_of_a_wrapped_stream_runs_on_request_threads():
    """Gradio may resume a stream on another worker thread: each step sets that thread's count, and a stream
    closed early (the page left) still runs its own clean-up."""
    from demos.common import friendly_errors

    seen, cleaned = [], []

    @friendly_errors
    def stream():
        try:
            for step in range(3):
                seen.append(torch.get_num_threads())
                yield step
        finally:
            cleaned.append(True)

    steps = stream()

    def next_step_on_a_fresh_thread():
        torch.set_num_threads(2)
        return next(steps)

    assert [_in_thread(next_step_on_a_fresh_thread) for _ in range(2)] == [0, 1]
    assert seen == [device_module.REQUEST_THREADS] * 2
    steps.close()
    assert cleaned == [True]


def test_int8_layers_keep_one_scale_per_row():
    """quantize_for_cpu gives each output row its own int8 scale: rows of very different sizes (as fine-tuned
    layers have) all stay within a few percent of float32, where one scale per matrix would flatten the small
    rows to a handful of levels. Activations use 8 bits exactly when the CPU has VNNI."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 24)
    with torch.no_grad():
        layer.weight.mul_(torch.logspace(-2, 1, 24).unsqueeze(1))  # rows from 0.01x to 10x
    x = torch.randn(256, 64)
    quantized = device_module.quantize_for_cpu(torch.nn.Sequential(layer))[0]
    assert type(quantized) is device_module.Int8Linear
    assert quantized.weight().qscheme() == torch.per_channel_affine
    assert quantized.reduce_range == (not device_module.cpu_has_vnni())
    with torch.no_grad():
        expected = layer(x) - layer.bias
        error = (quantized(x) - layer.bias - expected).norm(dim=0) / expected.norm(dim=0)
    assert error.max() < 0.05, error


@pytest.mark.parametrize("fast", [True, False])
def test_training_uses_bfloat16_only_where_the_cpu_runs_it_in_hardware(monkeypatch, fast):
    """An AVX2 CPU emulates bfloat16 (a training step 13x slower than float32), so autocast stays off there."""
    monkeypatch.setattr(device_module, "cpu_has_fast_bfloat16", lambda: fast)
    with device_module.training_autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") is fast
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == (torch.bfloat16 if fast else torch.float32)
    with device_module.training_autocast("cpu", wanted=False):
        assert not torch.is_autocast_enabled("cpu")


def test_fast_bfloat16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    device_module.cpu_has_fast_bfloat16.cache_clear()
    try:
        for flags, expected in (("fpu avx avx2 fma", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True)):
            monkeypatch.setattr(device_module.Path, "read_text", lambda self, flags=flags: f"flags\t\t: {flags}\n")
            device_module.cpu_has_fast_bfloat16.cache_clear()
            assert device_module.cpu_has_fast_bfloat16() is expected
    finally:
        monkeypatch.undo()
        device_module.cpu_has_fast_bfloat16.cache_clear()
