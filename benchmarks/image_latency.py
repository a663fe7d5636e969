"""Single-image latency of a shipped image classifier on the CPU: p50 and p95 over many runs, as JSON.

    python benchmarks/image_latency.py --model cifar10 --threads 2

Measures what a user waits for: preprocessing a photo (crop, resize, normalise) plus the forward pass
(with the model's test-time flip), and the forward pass alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cifar10")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    os.environ.setdefault("MINILAB_DEVICE", "cpu")
    torch.set_num_threads(args.threads)
    from engine.vision.classify import ShippedClassifier

    classifier = ShippedClassifier(Path(__file__).resolve().parents[1] / "checkpoints" / args.model, "cpu")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    for _ in range(20):
        classifier.classify(photo)
    end_to_end, forward = [], []
    tensor = classifier.prepare(photo).unsqueeze(0)
    for _ in range(args.runs):
        started = time.perf_counter()
        classifier.classify(photo)
        end_to_end.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        classifier.predict_tensors(tensor)
        forward.append((time.perf_counter() - started) * 1000)
    print(json.dumps({
        "benchmark": "image_latency", "model": args.model, "threads": args.threads, "runs": args.runs,
        "input": "640x480 photo", "p50_ms": round(statistics.median(end_to_end), 2),
        "p95_ms": round(percentile(end_to_end, 95), 2), "forward_only_p50_ms": round(statistics.median(forward), 2),
        "forward_only_p95_ms": round(percentile(forward, 95), 2), "target_p50_ms": 20,
        "meets_target": statistics.median(end_to_end) <= 20,
    }))


if __name__ == "__main__":
    main()
