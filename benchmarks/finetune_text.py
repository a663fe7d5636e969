"""Fine-tune on upload, text classification: the issue's target, measured from the click.

The upload: N labelled review sentences (default 600) drawn from SST-2's dev file (film reviews the shipped
sst2 model never trained on), written as a CSV as a user would. The rest of the dev file (272 sentences)
plus benchmarks/data/reviews.tsv (60 product, film and restaurant reviews written for minilab) are the
unseen reviews. Default settings, reading the file included in the time.

    python benchmarks/finetune_text.py --threads 2          # prints one JSON line
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.text.classify import evaluate_predictor, load_text_classifier  # noqa: E402
from engine.text.data import read_labelled_text  # noqa: E402
from engine.text.finetune import TextFinetuneConfig, finetune_text_classifier  # noqa: E402
from engine.vision.data import find_data_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-upload", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = read_labelled_text(find_data_file("sst2/dev.tsv", args.data_dir), sentiment=True)
    order = np.random.default_rng(args.seed).permutation(len(dev.texts))
    upload, unseen = order[:args.n_upload], order[args.n_upload:]
    reviews = read_labelled_text(ROOT / "benchmarks" / "data" / "reviews.tsv", sentiment=True)
    config = TextFinetuneConfig()
    for name in ("strategy", "backbone"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    with tempfile.TemporaryDirectory(prefix="minilab-bench-") as tmp:
        path = Path(tmp) / "reviews.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([dev.texts[i], dev.labels[i]] for i in upload)
        started = time.perf_counter()
        result = finetune_text_classifier([path], config, Path(tmp) / "model")
        seconds = time.perf_counter() - started
        predictor = load_text_classifier(result["folder"])
        held = evaluate_predictor(predictor, [dev.texts[i] for i in unseen], [dev.labels[i] for i in unseen])
        other = evaluate_predictor(predictor, reviews.texts, reviews.labels)
    n = held["n"] + other["n"]
    accuracy = (held["accuracy"] * held["n"] + other["accuracy"] * other["n"]) / n
    print(json.dumps({"benchmark": "finetune_text", "upload": f"{len(upload)} SST-2 dev sentences (CSV)", "threads": args.threads,
                      "strategy": config.strategy, "encoder": result["metrics"].get("encoder"),
                      "seconds_from_click": round(seconds, 1), "val_accuracy": result["metrics"]["val_accuracy"],
                      "unseen_sst2_dev_accuracy": round(held["accuracy"], 4), "n_unseen_sst2": held["n"],
                      "reviews_tsv_accuracy": round(other["accuracy"], 4), "n_reviews": other["n"],
                      "unseen_accuracy": round(accuracy, 4),
                      "targets": {"within_30_s": seconds <= 30, "unseen_accuracy_at_least_0.92": accuracy >= 0.92}}))


if __name__ == "__main__":
    main()
