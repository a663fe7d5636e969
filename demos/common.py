"""Small helpers every tab uses: the session key, and turning engine errors into messages in the page."""
from __future__ import annotations

import functools
import logging

import gradio as gr

from engine.errors import UserError

log = logging.getLogger("minilab")


def session_key(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def friendly_errors(function):
    """A user's mistake becomes a readable gr.Error; an unexpected failure is logged and reported
    in one sentence, never as a traceback page, and the server carries on."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except MemoryError:
            raise gr.Error("Out of memory: try a smaller input.", print_exception=False) from None
        except Exception as error:  # last line of defence for the page
            log.exception("unexpected error in %s", function.__name__)
            raise gr.Error(f"Something went wrong ({error.__class__.__name__}); please try another input.",
                           print_exception=False) from None

    return wrapper
