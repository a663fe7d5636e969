"""Fine-tune on upload, the Fine-tune tab's own example: is the shapes example a good first experience?

Fine-tunes on demos/examples/shapes.zip (72 drawn circles, squares and triangles) with the page's defaults,
as the example sets them (mirroring on), and scores the model on new shapes drawn the same way with another
seed, through the Image tab's prediction path. Needs no ../shared data.

    python benchmarks/finetune_shapes.py                 # as the example sets it: mirroring on
    python benchmarks/finetune_shapes.py --no-flip       # the defaults without the example's mirroring
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "demos" / "examples"))

from engine.vision.classify import ShippedClassifier  # noqa: E402
from engine.vision.finetune import ImageFinetuneConfig, finetune_images  # noqa: E402
from make_examples import shape  # noqa: E402 - the example's own drawing code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-flip", action="store_true", help="leave mirroring off (the image default)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (validation split, order, augmentation)")
    parser.add_argument("--per-class", type=int, default=100, help="new shapes per class to score on")
    parser.add_argument("--backbone", default=None, help="default: the fine-tune's own (auto)")
    parser.add_argument("--lr", type=float, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ImageFinetuneConfig(flip=not args.no_flip, seed=args.seed)
    for name in ("backbone", "lr"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    rng = random.Random(1)  # the example itself was drawn with seed 0
    unseen = [(kind, shape(kind, rng)) for kind in ("circle", "square", "triangle") for _ in range(args.per_class)]
    with tempfile.TemporaryDirectory(prefix="minilab-bench-") as tmp:
        started = time.perf_counter()
        result = finetune_images([ROOT / "demos" / "examples" / "shapes.zip"], config, Path(tmp) / "work", Path(tmp) / "model")
        seconds = time.perf_counter() - started
        classifier = ShippedClassifier(result["folder"])
        correct = sum(classifier.labels[classifier.classify(image)["class_index"]] == kind for kind, image in unseen)
    metrics = result["metrics"]
    print(json.dumps({"benchmark": "finetune_shapes", "flip": config.flip, "seed": args.seed, "threads": args.threads,
                      "backbone": metrics["backbone"], "cv_accuracy_by_backbone": metrics.get("cv_accuracy_by_backbone"), "lr": config.lr,
                      "seconds_from_click": round(seconds, 1), "epochs": metrics["epochs_run"],
                      "val_accuracy": metrics["val_accuracy"], "unseen_accuracy": round(correct / len(unseen), 4),
                      "n_unseen": len(unseen)}))


if __name__ == "__main__":
    main()
