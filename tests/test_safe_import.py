"""Hugging Face libraries are imported through one lock (engine.safe_import): transformers 5 loads its classes
lazily, and two threads importing at once (the app's warm-up, a request, a training job) can make one of them
fail with "cannot import name 'AutoTokenizer'". A text fine-tune started just after the app came up failed so."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"
DIRECT_IMPORT = re.compile(r"^\s*(from|import)\s+(transformers|peft)\b", re.MULTILINE)


def test_the_engine_imports_transformers_and_peft_only_through_the_lock():
    direct = [f"{path.relative_to(ENGINE.parent)}:{source[:match.start()].count(chr(10)) + 1}"
              for path in sorted(ENGINE.rglob("*.py")) for source in [path.read_text()]
              for match in DIRECT_IMPORT.finditer(source)]
    assert direct == [], f"import these with engine.safe_import.import_names instead: {direct}"


def test_threads_that_import_at_the_same_moment_all_get_their_names():
    """Six threads, released together by a barrier, each import a different lazily loaded class (a fresh
    interpreter, so nothing is imported yet). Without the lock, about one run in five lost one of them here."""
    script = """
import threading
from engine.safe_import import import_names
names = ["AutoTokenizer", "AutoModel", "AutoModelForSequenceClassification", "AutoImageProcessor",
         "AutoModelForCausalLM", "AutoModelForImageClassification"]
barrier, got, errors = threading.Barrier(len(names)), [], []
def load(name):
    barrier.wait()
    try:
        got.append(import_names("transformers", name)[0].__name__)
    except Exception as error:
        errors.append(repr(error))
threads = [threading.Thread(target=load, args=(name,)) for name in names]
[thread.start() for thread in threads]
[thread.join() for thread in threads]
print(sorted(got) == sorted(names), errors)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ENGINE.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "True []", result.stdout
