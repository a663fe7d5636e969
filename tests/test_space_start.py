"""The app started as a Hugging Face Space starts it, and with ZeroGPU's variable set but no ZeroGPU behind it (as in CI).

A Space runs `python app.py` with SYSTEM=spaces, SPACE_ID and GRADIO_SERVER_NAME=0.0.0.0 in its environment. On
ZeroGPU hardware it also sets SPACES_ZERO_GPU=true (and the address of the device API, which `spaces` needs:
without it `import spaces` fails). minilab must then say why and serve on the CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client

from tests.e2e.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def start(env_extra: dict, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, MINILAB_OFFLINE="1", PYTHONUNBUFFERED="1", SYSTEM="spaces", SPACE_ID="someone/minilab",
               GRADIO_SERVER_NAME="0.0.0.0", GRADIO_SERVER_PORT=str(port), **env_extra)
    env.pop("MINILAB_DEVICE", None)
    handle = open(log, "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180  # a loaded 2-core machine: a start takes 20-60 s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail(f"app.py did not answer within 180 s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.parametrize("zerogpu", [False, True], ids=["cpu-space", "zerogpu-variable-without-zerogpu"])
def test_the_app_starts_as_a_space_and_the_tabs_answer(zerogpu, tmp_path):
    log = tmp_path / "app.log"
    proc, url = start({"SPACES_ZERO_GPU": "true"} if zerogpu else {}, log)
    try:
        client = Client(url, verbose=False)
        label = client.predict("sst2", "A warm and funny film.", api_name="/classify_text")[0]
        assert label["label"] == "positive"
        text, _, status = client.predict("shakespeare", "ROMEO:\n", 40, 0.8, 0, 1.0, 0, False, api_name="/generate")
        assert text.startswith("ROMEO:\n") and len(text) > len("ROMEO:\n") and "done" in status
        device = client.predict(api_name="/system_status")[0]
        assert "cpu" in device
        # A training job runs in a worker process there too, on the CPU, and hands back its agent.
        from tests.test_app import SMALL_RUN, poll_until_done

        owner = "f" * 32
        client.predict(owner, *{**SMALL_RUN, "total_steps": 1000}.values(), api_name="/rl_train")
        assert "done" in poll_until_done(client, owner)[0]
        if zerogpu:  # the page and the log say why there is no GPU
            assert "ZeroGPU could not start" in device
            assert "ZeroGPU could not start" in log.read_text()
    finally:
        stop(proc)


def test_zerogpu_module_falls_back_to_the_cpu_with_a_reason():
    code = ("import os, demos.zerogpu as z; "
            "print(z.ACTIVE, os.environ.get('MINILAB_DEVICE'), z.gpu(5)(len) is len, bool(z.TRAINING_NOTE)); print(z.STATUS)")
    env = dict(os.environ, SPACES_ZERO_GPU="true")
    env.pop("SPACES_ZERO_DEVICE_API_URL", None)
    env.pop("MINILAB_DEVICE", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    first, reason = out.stdout.strip().splitlines()[-2:]
    assert first == "False cpu True False"
    assert "SPACES_ZERO_DEVICE_API_URL" in reason and "CPU" in reason


def test_elsewhere_gpu_returns_the_function_unchanged():
    from demos import zerogpu

    assert not zerogpu.ACTIVE and zerogpu.STATUS == ""

    def predict(x):
        return x + 1

    assert zerogpu.gpu(10)(predict) is predict
    assert zerogpu.gpu(lambda x: 3)(predict) is predict


def test_training_stays_on_the_cpu_on_zerogpu(monkeypatch):
    import threading

    from engine import device

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert device.training_device().type == "cpu"
    seen = []
    worker = threading.Thread(target=lambda: seen.append(device.pick_device().type))  # a request's thread
    worker.start()
    worker.join()
    assert seen == ["cpu"]
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert device.training_device() == device.chosen_device()
