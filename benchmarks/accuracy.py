"""Quality of the shipped models on their validation data, recomputed from ../shared/data, as JSON.

    python benchmarks/accuracy.py

- cifar10, mnist: accuracy on the validation split the training command made;
- sst2: accuracy on SST-2 dev (872 sentences) and on benchmarks/data/reviews.tsv, 60 short product, film and
  restaurant reviews written for this project (another source than SST-2's film critics), as a user runs it
  (int8 on the CPU);
- shakespeare: nats per character on the last 10% of Tiny Shakespeare.

The split is the one the training command made (same seed and fraction, read from the model card),
so this checks the card's figure independently of the training run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.vision import data as datasets  # noqa: E402
from engine.vision.classify import ShippedClassifier  # noqa: E402
from engine.vision.train import normalise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    results = {"benchmark": "accuracy"}
    for name in ("cifar10", "mnist"):
        classifier = ShippedClassifier(ROOT / "checkpoints" / name)
        config = classifier.card.get("training_config", {})
        if name == "cifar10":
            images, labels, _ = datasets.load_cifar10()
        else:
            a, b = datasets.load_mnist(split="train"), datasets.load_mnist(split="test")
            images, labels = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
        _, val = datasets.stratified_split(labels.numpy(), config.get("val_fraction", 0.1), config.get("seed", 0))
        pre = classifier.preprocessing
        x = normalise(images[val], pre["mean"], pre["std"])
        probs = torch.cat([classifier.predict_tensors(x[i : i + 500]) for i in range(0, len(x), 500)])
        accuracy = (probs.argmax(1) == labels[val]).float().mean().item()
        results[name] = {"val_accuracy": round(accuracy, 4), "n_val": len(val), "card_val_accuracy": classifier.card["metrics"].get("val_accuracy")}
    from engine.text.evaluate import evaluate_lm_file, evaluate_sentiment_file

    results["sst2"] = {"sst2_dev": evaluate_sentiment_file(str(ROOT / "checkpoints" / "sst2"), str(datasets.SHARED_DATA / "sst2" / "dev.tsv")),
                       "reviews": evaluate_sentiment_file(str(ROOT / "checkpoints" / "sst2"), str(ROOT / "benchmarks" / "data" / "reviews.tsv"))}
    results["shakespeare"] = evaluate_lm_file(str(ROOT / "checkpoints" / "shakespeare"),
                                              str(datasets.SHARED_DATA / "tinyshakespeare" / "input.txt"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
