"""Import Hugging Face libraries safely from any thread.

transformers 5 loads its classes lazily: `from transformers import AutoTokenizer` imports a submodule on first
use. Two threads doing that at once can make one of them fail with "cannot import name 'AutoTokenizer' from
'transformers'" while the other is halfway through (peft imports transformers too). The web app imports them
from its warm-up thread, from requests and from training jobs, in any order, so every such import in the
engine goes through one lock.
"""
from __future__ import annotations

import importlib
import threading

_lock = threading.Lock()


def import_names(module: str, *names: str) -> tuple:
    """`AutoModel, AutoTokenizer = import_names("transformers", "AutoModel", "AutoTokenizer")`, under a process-wide lock."""
    with _lock:
        imported = importlib.import_module(module)
        return tuple(getattr(imported, name) for name in names)
