"""Why each web request runs PyTorch on one thread: the same requests timed in the main thread, in a second
thread (as Gradio runs them) with two PyTorch threads, and in a second thread with one.

Every thread that runs PyTorch on two or more CPU threads gets its own OpenMP team. Once two teams exist,
OpenMP counts more threads than cores and puts waiting threads to sleep between parallel regions; small
operations (one character's step, one sentence) then wait for wake-ups.

    python benchmarks/request_threads.py          # prints one JSON line: median ms per request, by where it ran
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.registry import default_registry  # noqa: E402
from engine.text.generate import SamplingSettings  # noqa: E402
from engine.vision.explain import grad_cam  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    registry = default_registry()
    image_model, sentiment, lm = registry.get("cifar10"), registry.get("sst2"), registry.get("shakespeare")
    photo = Image.open(ROOT / "demos" / "examples" / "cat.jpg").convert("RGB")

    def image() -> None:  # what the image tab does: top-5 and Grad-CAM
        result = image_model.classify(photo)
        grad_cam(image_model, result["input"], result["class_index"])

    def sentence() -> None:  # label and per-word explanation
        sentiment.explain("service was slow but the soup was great")

    def generate() -> None:  # 300 characters
        for _ in lm.stream("ROMEO:\n", SamplingSettings(300, 0.8, 0, 1.0, 1).validate(), should_stop=lambda: False):
            pass

    pool = ThreadPoolExecutor(1)

    def on(where: str, request) -> float:
        def timed() -> float:
            if where == "second thread, 1 PyTorch thread":
                torch.set_num_threads(1)
            elif where == "second thread, 2 PyTorch threads":
                torch.set_num_threads(2)
            started = time.perf_counter()
            request()
            return (time.perf_counter() - started) * 1000

        return timed() if where == "main thread, 2 PyTorch threads" else pool.submit(timed).result()

    places = ["main thread, 2 PyTorch threads", "second thread, 2 PyTorch threads", "second thread, 1 PyTorch thread"]
    requests = [("image_ms", image, 30), ("sentence_ms", sentence, 60), ("generate_300_chars_ms", generate, 6)]
    result = {name: {} for name, _, _ in requests}
    for where in places:  # in this order: the main thread first, while it is the only thread with a team
        for name, request, repeats in requests:
            on(where, request)  # warm
            result[name][where] = round(statistics.median(on(where, request) for _ in range(repeats)), 1)
    print(json.dumps({"benchmark": "request_threads", "cores": torch.get_num_threads(), **result}))


if __name__ == "__main__":
    main()
