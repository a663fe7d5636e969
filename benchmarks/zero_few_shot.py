"""Zero-shot and few-shot accuracy on minilab's own news set, as one JSON line.

    python benchmarks/zero_few_shot.py --threads 2            # the figures in docs/zero-few-shot.md
    python benchmarks/zero_few_shot.py --threads 2 --draws 5  # also 5 random 8-a-label draws from the dev set

Data: benchmarks/data/news_dev.tsv (240 news items written for minilab, 60 each of World, Sports, Business,
Sci/Tech) and benchmarks/data/news_fewshot_8.tsv (8 other items a label). Nothing here is tuned on a public set.
- zero-shot, typing only the four names: the plain recipe (cosine to "This text is about {label}."), then with the
  names expanded and templates averaged, then with the batch calibrating and self-training (the default);
- few-shot from the 32 examples: prototypes without and with the names' prior (instant), then SetFit-style
  fine-tuning (the default for `finetune text` on a small file), timed from the start to a saved model and
  scored as the Text tab serves it (int8).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

NAMES = "World, Sports, Business, Sci/Tech"
DEV = ROOT / "benchmarks" / "data" / "news_dev.tsv"
FEWSHOT = ROOT / "benchmarks" / "data" / "news_fewshot_8.tsv"


def accuracy(classifier, texts: list[str], labels: list[str]) -> float:
    probabilities, _ = classifier.predict_proba(texts)
    return float(np.mean([classifier.labels[i] == label for i, label in zip(probabilities.argmax(1), labels)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draws", type=int, default=0, help="also average over N random 8-a-label draws from the dev set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-setfit", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MINILAB_DEVICE", "cpu")
    torch.set_num_threads(args.threads)
    from engine.text.classify import evaluate_predictor, load_text_classifier
    from engine.text.data import read_labelled_text
    from engine.text.fewshot import FewShotConfig, fit_fewshot, read_examples
    from engine.text.zeroshot import ZeroShotConfig, classify_file

    report: dict = {"benchmark": "zero_few_shot", "threads": args.threads, "dev": "benchmarks/data/news_dev.tsv (240)"}
    for name, config in (("plain", ZeroShotConfig(adapt="off", ensemble=False, expand=False)),
                         ("names_expanded_templates_averaged", ZeroShotConfig(adapt="off")),
                         ("default_batch_self_trained", ZeroShotConfig())):
        started = time.perf_counter()
        result = classify_file(NAMES, DEV, config)
        report[f"zero_shot_{name}"] = result["accuracy"]
        report[f"zero_shot_{name}_s"] = round(time.perf_counter() - started, 2)
    dev = read_labelled_text(DEV)
    texts, labels, _ = read_examples(FEWSHOT)
    for prior in (0.0, 1.0):
        result = fit_fewshot(texts, labels, FewShotConfig(prior=prior))
        report[f"few_shot_prototypes_prior{prior:g}"] = round(accuracy(result["classifier"], dev.texts, dev.labels), 4)
        report[f"few_shot_prototypes_prior{prior:g}_loo"] = result["metrics"]["loo_accuracy"]
    if not args.skip_setfit:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            result = fit_fewshot(texts, labels, FewShotConfig(method="setfit", seed=args.seed), out=Path(folder) / "model")
            report["few_shot_setfit_s_to_saved_model"] = round(time.perf_counter() - started, 1)
            report["few_shot_setfit_steps"] = result["metrics"].get("steps") or result["classifier"].config.max_steps
            report["few_shot_setfit"] = round(accuracy(result["classifier"], dev.texts, dev.labels), 4)
            served = load_text_classifier(result["folder"])
            report["few_shot_setfit_served_int8"] = round(evaluate_predictor(served, dev.texts, dev.labels)["accuracy"], 4)
    if args.draws:
        rows = {"prototypes": [], "setfit": []}
        pool_texts, pool_labels = np.array(dev.texts, dtype=object), np.array(dev.labels)
        for draw in range(args.draws):
            rng = np.random.default_rng(100 + draw)
            train = [i for k in sorted(set(pool_labels)) for i in rng.choice(np.where(pool_labels == k)[0], 8, replace=False)]
            test = np.setdiff1d(np.arange(len(pool_labels)), train)
            for method in ([] if args.skip_setfit else ["setfit"]) + ["prototypes"]:
                result = fit_fewshot(list(pool_texts[train]), list(pool_labels[train]), FewShotConfig(method=method))
                rows[method].append(accuracy(result["classifier"], list(pool_texts[test]), list(pool_labels[test])))
        for method, values in rows.items():
            if values:
                report[f"draws_{method}_mean"] = round(float(np.mean(values)), 4)
                report[f"draws_{method}"] = [round(v, 4) for v in values]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
