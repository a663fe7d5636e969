"""ZeroGPU: a Hugging Face Space on free shared GPUs, where the GPU exists only inside `@spaces.GPU` calls.

On ZeroGPU hardware (the Space sets SPACES_ZERO_GPU=true) a Space's process has no GPU of its own. The `spaces`
package patches torch so that models can be moved to "cuda" in the main process without touching a GPU, and
each function decorated with `@spaces.GPU(duration=...)` runs, when a page event calls it, in a forked worker
that holds a real GPU for at most `duration` seconds; its result comes back pickled. So:

- `spaces` must be imported before anything initialises CUDA: app.py imports this module first;
- the work that wants the GPU (predictions, Grad-CAM, look-inside, explanations, generation) is a module-level
  function decorated here with `gpu(duration)`, called from a Gradio handler, and defined before launch;
- training jobs run in the background, outlive the click that started them, and report progress, pause and
  cancel through the web process: none of that survives a forked worker that may hold the GPU for one call
  only, so on ZeroGPU they train on the CPU (engine.device.training_device) and the page says so.

Everywhere else (a laptop, a CPU Space, a GPU Space, CI) `gpu(duration)` returns the function unchanged.
Where SPACES_ZERO_GPU is set but no ZeroGPU is behind it (CI, a copy of a Space's settings), `import spaces`
fails (it needs SPACES_ZERO_DEVICE_API_URL): minilab then says why once and serves on the CPU.
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

MAX_DURATION_S = 120  # what one call asks for at most; ZeroGPU refuses a duration above its cap


def _start() -> tuple[object | None, str]:
    """The `spaces` module when ZeroGPU is really there, else None; and one sentence saying which and why."""
    if os.environ.get("SPACES_ZERO_GPU", "").strip().lower() not in ("1", "t", "true"):
        return None, ""
    try:
        import spaces  # must come before torch touches CUDA
    except Exception as error:  # noqa: BLE001 - any failure means: no ZeroGPU here
        os.environ["MINILAB_DEVICE"] = "cpu"
        del os.environ["SPACES_ZERO_GPU"]  # from here on a CPU Space: for minilab, Gradio and `spaces` alike
        why = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        message = f"SPACES_ZERO_GPU is set, but ZeroGPU could not start ({why}): minilab runs on the CPU."
        print(message, flush=True)  # in the Space's log
        return None, message
    return spaces, "ZeroGPU: predictions and generation borrow a GPU for each click; training runs on the CPU."


SPACES, STATUS = _start()
ACTIVE = SPACES is not None
TRAINING_NOTE = ("On this ZeroGPU Space, training runs on the CPU: ZeroGPU lends its GPU only for the length of one "
                 "click, in another process, and a training job outlives the click and reports progress, pause "
                 "and cancel as it goes.") if ACTIVE else ""


def gpu(duration: int | Callable[..., int]) -> Callable[[F], F]:
    """`@spaces.GPU(duration=...)` on ZeroGPU, where `duration` (seconds, or a function of the call's arguments
    that returns them) is what the call may hold the GPU for; shorter asks wait less in ZeroGPU's queue.
    Elsewhere the function is returned as it is."""

    def capped(*args, **kwargs) -> int:
        wanted = duration(*args, **kwargs) if callable(duration) else duration
        return int(min(MAX_DURATION_S, max(1, wanted)))

    def wrap(function: F) -> F:
        if not ACTIVE:
            return function
        return SPACES.GPU(duration=capped)(function)

    return wrap
