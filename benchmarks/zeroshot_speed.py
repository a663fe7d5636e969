"""Speed of zero-shot classification on the CPU, as one JSON line.

    python benchmarks/zeroshot_speed.py --threads 2

- one sentence: ZeroShotClassifier.classify([text]) end to end (tokenise, encode, compare with the labels' cached
  vectors, softmax), p50 and p95 over many runs, the labels typed once (their vectors are cached);
- a batch of 1,000 texts (the news texts of benchmarks/data/news_dev.tsv, repeated), with the batch's
  calibration and self-training, in seconds.
Targets (issue): one sentence <= 20 ms p50; 1,000 sentences <= 5 s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--labels", default="World, Sports, Business, Sci/Tech")
    args = parser.parse_args()
    os.environ.setdefault("MINILAB_DEVICE", "cpu")
    torch.set_num_threads(args.threads)
    from engine.text.data import read_labelled_text
    from engine.text.zeroshot import ZeroShotClassifier

    texts = read_labelled_text(ROOT / "benchmarks" / "data" / "news_dev.tsv").texts
    started = time.perf_counter()
    classifier = ZeroShotClassifier(args.labels)  # loads the encoder and embeds the labels' sentences
    setup = time.perf_counter() - started
    for text in texts[:20]:
        classifier.classify([text])
    single = []
    for i in range(args.runs):
        started = time.perf_counter()
        classifier.classify([texts[i % len(texts)]])
        single.append((time.perf_counter() - started) * 1000)
    batch = (texts * (args.batch // len(texts) + 1))[:args.batch]
    started = time.perf_counter()
    result = classifier.classify(batch)
    batch_s = time.perf_counter() - started
    single.sort()
    print(json.dumps({"benchmark": "zeroshot_speed", "threads": args.threads, "labels": classifier.labels,
                      "setup_s": round(setup, 2), "single_ms_p50": round(statistics.median(single), 2),
                      "single_ms_p95": round(single[int(0.95 * (len(single) - 1))], 2), "batch_texts": len(batch),
                      "batch_s": round(batch_s, 2), "batch_texts_per_s": round(len(batch) / batch_s, 1),
                      "batch_adapted": result.adapted, "batch_rounds": result.rounds,
                      "texts": "benchmarks/data/news_dev.tsv (240 news items, 15-40 words), repeated"}))


if __name__ == "__main__":
    main()
