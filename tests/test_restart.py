"""Kill the app in the middle of a training job and start it again: no shipped model is lost or touched,
nothing half-written is left in checkpoints/, and the restarted app serves the shipped models."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gradio_client import Client, handle_file

from tests.test_app import free_port
from tests.test_finetune import shapes_zip

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def start_app(port: int) -> subprocess.Popen:
    env = dict(os.environ, MINILAB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("the app did not start")


def test_kill_during_a_job_then_restart(tmp_path):
    before = snapshot(CHECKPOINTS)
    port = free_port()
    app = start_app(port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        upload = handle_file(str(shapes_zip(tmp_path / "shapes.zip", 10)))
        settings = ["cifar10", "finetune", "auto", "probe", "scratch", 60, 500, 0.2, 64, 0.3, 16, False, 0, 0.3]
        client.predict("e" * 32, "Images", [upload], *settings, api_name="/finetune_start")
        deadline = time.time() + 60
        while time.time() < deadline and "training" not in client.predict("e" * 32, api_name="/finetune_poll")[0]:
            time.sleep(0.3)
        time.sleep(2)  # well inside the training loop
    finally:
        app.send_signal(signal.SIGKILL)
        app.wait(timeout=10)
    assert snapshot(CHECKPOINTS) == before
    app = start_app(port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        top = client.predict("cifar10", handle_file(str(ROOT / "demos" / "examples" / "cat.jpg")), None, "photo",
                             api_name="/classify")[0]
        assert top["label"] in {"cat", "dog", "deer", "frog", "bird", "horse", "airplane", "automobile", "ship", "truck"}
        assert client.predict("e" * 32, api_name="/finetune_poll")[0].startswith("No training yet")  # a new process
    finally:
        app.terminate()
        app.wait(timeout=30)
    assert snapshot(CHECKPOINTS) == before
