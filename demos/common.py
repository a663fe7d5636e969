"""Small helpers every tab uses: the session key, and turning engine errors into messages in the page."""
from __future__ import annotations

import functools
import inspect
import logging
import sys

import gradio as gr

from engine.errors import UserError

log = logging.getLogger("minilab")
LIVE_STATES = ("queued", "running", "paused")  # a job in one of these has not ended


def ensure_owner(owner: str | None) -> str:
    """The browser's owner key (kept in localStorage): kept if it has one, made once if not."""
    import uuid

    return owner if isinstance(owner, str) and len(owner) == 32 else uuid.uuid4().hex


def latest_job(owner: str | None, prefix: str):
    """This browser's newest job whose name starts with `prefix` (a tab's own jobs), or None."""
    from engine.jobs import default_runner

    if not owner:
        return None
    jobs = [job for job in default_runner().jobs(owner) if job.name.startswith(prefix)]
    return jobs[-1] if jobs else None


def control_job(action: str, owner: str | None, prefix: str) -> None:
    """Pause, resume or cancel this browser's newest running job of a tab."""
    from engine.jobs import default_runner

    job = latest_job(owner, prefix)
    if job is None or job.done:
        raise UserError("No training is running.")
    getattr(default_runner(), action)(job.id, owner)


def made_model(job) -> bool:
    """True once a job has ended with a model folder: a job cancelled while queued has none."""
    return job.done and isinstance(job.result, dict) and bool(job.result.get("folder"))


def ended_empty(job, button: str) -> str | None:
    """The progress line of a job stopped before it made anything ("kept the best model so far" would mislead)."""
    if job.state not in ("cancelled", "timed_out") or made_model(job):
        return None
    why = "cancelled" if job.state == "cancelled" else "stopped at the time limit"
    return f"**⏹ {why}** before a model was saved: nothing to keep. Press **{button}** to start again."


def model_list(choices: list[tuple[str, str]], current: str | None, fallback: str | None = None) -> gr.Dropdown:
    """New choices for a model list, on page load or tab select. The value is sent only when the current one is
    gone (then `fallback`, or the first choice): a click (on an example, say) may have changed it while this
    update was on its way, and sending the value it had when the event started would undo that click."""
    if current in [value for _, value in choices]:
        return gr.Dropdown(choices=choices)
    return gr.Dropdown(choices=choices, value=fallback or (choices[0][1] if choices else None))


def model_zip(folder, name: str) -> str:
    """A model folder zipped beside itself (once) for download."""
    from pathlib import Path

    from engine.checkpoints import zip_model_folder

    target = Path(folder).parent / f"{name}.zip"
    if not target.exists():
        zip_model_folder(folder, target)
    return str(target)


def session_key(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def _page_error(error: Exception, where: str) -> gr.Error:
    """The one-sentence message a page shows for an exception; unexpected ones are logged in full."""
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, UserError):
        return gr.Error(str(error), print_exception=False)
    if isinstance(error, MemoryError):
        return gr.Error("Out of memory: try a smaller input.", print_exception=False)
    log.exception("unexpected error in %s", where)
    return gr.Error(f"Something went wrong ({error.__class__.__name__}); please try another input.", print_exception=False)


def _request_threads() -> None:
    """PyTorch threads for this request (engine.device.use_request_threads), once the app has imported the engine:
    a handler that needs no PyTorch (a poll, a page update) never waits here for torch to be imported."""
    use_request_threads = getattr(sys.modules.get("engine.device"), "use_request_threads", None)
    if use_request_threads is not None:
        use_request_threads()


def friendly_errors(function):
    """A user's mistake becomes a readable gr.Error; an unexpected failure is logged and reported
    in one sentence, never as a traceback page, and the server carries on. Works for streaming
    (generator) handlers too, whose errors arrive while they are iterated. Every call (every step of a
    stream) also sets the worker thread's PyTorch thread count for requests."""
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def stream(*args, **kwargs):
            steps = function(*args, **kwargs)
            try:
                while True:
                    _request_threads()  # Gradio may run each step of a stream on a different worker thread
                    try:
                        item = next(steps)
                    except StopIteration:
                        return
                    yield item
            except Exception as error:  # last line of defence for the page
                raise _page_error(error, function.__name__) from None
            finally:
                steps.close()  # a stream the page stopped still runs its own clean-up

        return stream

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            _request_threads()
            return function(*args, **kwargs)
        except Exception as error:  # last line of defence for the page
            raise _page_error(error, function.__name__) from None

    return wrapper


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str | None = None):
    """A confusion matrix: rows the true label, columns the predicted one, counts written in when there is room."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    side = min(9.0, 2.5 + 0.45 * k)
    figure, axes = plt.subplots(figsize=(side, side * 0.85))
    axes.imshow(confusion, cmap="Blues")
    axes.set_xticks(range(k), classes, rotation=45, ha="right")
    axes.set_yticks(range(k), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if k <= 25:
        peak = max(1, max(max(row) for row in confusion))
        for i, row in enumerate(confusion):
            for j, value in enumerate(row):
                if value:
                    axes.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black", fontsize=8)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    plt.close(figure)
    return figure
