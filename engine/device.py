"""Pick the device once: CUDA, then Apple MPS, then the CPU. MINILAB_DEVICE overrides (cpu, cuda, cuda:1, mps)."""
from __future__ import annotations

import os
import platform
import threading
from functools import lru_cache
from pathlib import Path

import torch

from engine.errors import UserError


def pick_device() -> torch.device:
    """The device models are loaded on. On ZeroGPU (a Hugging Face Space whose GPU is lent per call), `spaces`
    lets only the main thread place a model on "cuda" (a stand-in until a GPU call); a model loaded later, from a
    request's thread, stays on the CPU and runs there inside the GPU call."""
    if on_zerogpu() and threading.current_thread() is not threading.main_thread():
        return torch.device("cpu")
    return chosen_device()


@lru_cache(maxsize=None)
def chosen_device() -> torch.device:
    """CUDA, then Apple MPS, then the CPU, unless MINILAB_DEVICE names one; worked out once."""
    wanted = os.environ.get("MINILAB_DEVICE", "").strip().lower()
    if wanted:
        return resolve_device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def on_zerogpu() -> bool:
    """Whether this is a Hugging Face Space on ZeroGPU hardware (the Space sets SPACES_ZERO_GPU=true)."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "t", "true")


def training_device() -> torch.device:
    """Where training jobs run: the chosen device, except on ZeroGPU, where the GPU is lent only for one call
    from a page event, in a forked process, and a job outlives the call and reports progress as it goes
    (demos/zerogpu.py says more): there jobs train on the CPU."""
    return torch.device("cpu") if on_zerogpu() else chosen_device()


REQUEST_THREADS = max(1, int(os.environ.get("MINILAB_REQUEST_THREADS", 1)))
# PyTorch's own thread count (every core, or OMP_NUM_THREADS), read when this module is first imported, so before
# use_request_threads can lower it. A new thread starts with the count that any thread set last: once the web app
# has run a request on 1 thread, a training job's new thread would train on 1 core too, at half the speed.
# engine.jobs gives each job thread its share of this count explicitly.
DEFAULT_THREADS = torch.get_num_threads()


def use_request_threads() -> None:
    """Run the calling thread's PyTorch CPU work on REQUEST_THREADS threads (default 1); the web app calls this
    before each request. PyTorch's thread count belongs to the calling thread, and every thread that uses two
    or more gets its own OpenMP team. Once two teams exist (two request threads, or a request and a training
    job), OpenMP counts more threads than cores and puts its waiting threads to sleep between parallel regions,
    so small operations wait for wake-ups: streaming ran at 410-450 characters/s instead of 2,400. On one
    thread each, requests run side by side without teams (2,240-2,290 characters/s; benchmarks/request_threads.py)."""
    set_threads(REQUEST_THREADS)


def set_threads(count: int) -> None:
    """The calling thread's PyTorch thread count; set only when it changes (setting it clears oneDNN's cache)."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


@lru_cache(maxsize=None)
def _cpu_workers(workers: int):
    """A pool of `workers` threads kept for the life of the process, so that a batch of texts starts no threads."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers, thread_name_prefix="minilab-cpu")


def map_on_cpu_threads(function, items: list, workers: int) -> list:
    """[function(item) for item in items], spread over `workers` threads that each run PyTorch on one thread.
    Why: many small forward passes run faster side by side than one after another on an OpenMP team (sst2,
    2,000 sentences on 2 cores: 649-686 sentences/s on two one-thread workers, 510-594 on one two-thread
    team), and one-thread workers make no team that would slow the server's other threads."""

    def work(item):
        set_threads(1)
        with torch.no_grad():  # grad mode is per thread: the caller's no_grad does not reach these threads
            return function(item)

    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    return list(_cpu_workers(workers).map(work, items))


def resolve_device(name: str) -> torch.device:
    """Turn a user's device name into a torch.device, refusing ones this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"Unknown device {name!r}: use cpu, cuda, cuda:N or mps.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"Device {name!r} asked for, but this machine has no CUDA GPU.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"Device {name!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s).")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"Device {name!r} asked for, but Apple MPS is not available here.")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"Device {name!r} is not supported: use cpu, cuda or mps.")
    return device


def _process_memory_mb() -> float | None:
    """Resident memory of this process, from /proc (Linux) or resource (elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024
    except (ImportError, OSError):
        return None


def device_report() -> dict:
    """What the System tab shows: the chosen device, why, and how much memory is in use."""
    device = pick_device()
    report = {
        "device": str(device),
        "chosen_by": "MINILAB_DEVICE" if os.environ.get("MINILAB_DEVICE") else "auto (CUDA, then MPS, then CPU)",
        "training_device": str(training_device()),
        "zerogpu": on_zerogpu(),
        "torch": torch.__version__,
        "cpu_threads_per_request": REQUEST_THREADS,  # what the web app gives each request (use_request_threads)
        "cpu_count": os.cpu_count(),
        "process_memory_mb": _process_memory_mb(),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        report.update(
            gpu_name=torch.cuda.get_device_name(index),
            gpu_memory_total_mb=round(total / 2**20),
            gpu_memory_free_mb=round(free / 2**20),
            gpu_memory_allocated_by_torch_mb=round(torch.cuda.memory_allocated(index) / 2**20),
        )
    elif device.type == "mps":
        report["mps_memory_allocated_mb"] = round(torch.mps.current_allocated_memory() / 2**20)
    return report


@lru_cache(maxsize=None)
def cpu_has_vnni() -> bool:
    """Whether the CPU multiplies int8 with VNNI instructions (Linux x86 flags; False when unknown). Without
    them, fbgemm adds pairs of uint8 x int8 products in 16 bits, which can overflow unless activations keep
    to 7 bits; with them the sums are 32 bits and activations may use all 8."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


@lru_cache(maxsize=None)
def cpu_has_fast_bfloat16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX; Linux x86 flags, False when unknown).
    Without them PyTorch emulates bfloat16, and training in it is slower than in float32, not faster: a
    ResNet-9 step on 64 digits took 2.5 s in bfloat16 against 0.19 s in float32 on a 2-core AVX2 EPYC."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bfloat16_is_fast(device: torch.device | str) -> bool:
    """Whether bfloat16 autocast speeds training up on this device (any CUDA GPU that supports it, or a CPU as above)."""
    device = torch.device(device)
    if device.type == "cuda":
        # Compute capability 8.0 on (A100, L4, H100...) multiplies bfloat16 natively. torch.cuda.is_bf16_supported()
        # also says yes where it is only emulated (a T4 or V100, slower than float32), and asks about the current
        # GPU rather than this one; so ask the card itself.
        return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and cpu_has_fast_bfloat16()


def training_autocast(device: torch.device | str, wanted: bool = True):
    """bfloat16 autocast for a training step where it is wanted and fast; a no-op context elsewhere.
    The weights stay float32, so a model saved from either path is the same kind of file."""
    device = torch.device(device)
    enabled = wanted and bfloat16_is_fast(device)
    return torch.autocast(device.type if device.type in ("cpu", "cuda") else "cpu", dtype=torch.bfloat16, enabled=enabled)


class Int8Linear(torch.ao.nn.quantized.dynamic.Linear):
    """PyTorch's dynamic int8 Linear, with its activations on 8 bits rather than 7 where the CPU allows it
    (PyTorch always asks fbgemm for 7 bits, to be safe on CPUs without VNNI)."""

    reduce_range = not cpu_has_vnni()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                  reduce_range=self.reduce_range).to(x.dtype)


def quantize_for_cpu(module: torch.nn.Module) -> torch.nn.Module:
    """int8 weights for every Linear layer, one scale per output row, with activations quantized on the fly
    (PyTorch's dynamic quantization): for batched text about 2.8x faster than float32 on a CPU with VNNI, for
    one character at a time about 2x (a quarter of the bytes to read per step). Why per row and 8-bit
    activations: with PyTorch's defaults (one scale per matrix, 7-bit activations) the sst2 model lost
    1.2 points on SST-2 dev (87.61% vs 88.76% in float32); with these it loses 0.2 (88.53%)."""
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    # x86 (fbgemm) is where this was measured; other engines (ARM's qnnpack) keep PyTorch's default
    x86 = torch.backends.quantized.engine in ("x86", "fbgemm")
    qconfig = per_channel_dynamic_qconfig if x86 else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager-mode API is deprecated in favour of torchao, yet still shipped
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear: qconfig}, mapping={torch.nn.Linear: Int8Linear})
