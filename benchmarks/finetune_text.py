"""Fine-tune on upload, text classification: the issue's target, measured from the click.

Two uploads, both written as a CSV as a user would, fine-tuned with default settings (reading the file
included in the time):
- `--upload reviews` (default): 1,000 of the 1,500 one-sentence product, film and restaurant reviews in
  benchmarks/data/reviews_{products,films,restaurants}.tsv (written for minilab, 250 positive and 250
  negative each), scored on the other 500, per kind and overall. The set is harder than the issue's reviews:
  the issue's baseline (`--backbone minilm --strategy probe`: frozen MiniLM sentence vectors + logistic
  regression) scores 79.6% (seed 0) and 85.4% (seed 1) here, against the 88.3% the issue quotes for its own;
- `--upload sst2`: 600 SST-2 dev sentences (film reviews the shipped sst2 model never trained on), scored on
  the other 272 dev sentences plus benchmarks/data/reviews.tsv (60 more reviews). Needs ../shared/data;
- `--files A B ...`: labelled files of your own, in any form the Fine-tune tab reads (UCI's headerless
  "sentence<TAB>0" files, say), pooled: `--n-upload` rows are uploaded, the rest are scored per file.

    python benchmarks/finetune_text.py --threads 2                       # prints one JSON line
    python benchmarks/finetune_text.py --threads 2 --backbone minilm --strategy probe   # the issue's baseline
    python benchmarks/finetune_text.py --threads 2 --task kind           # not sentiment: which kind of review
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

REVIEW_FILES = [ROOT / "benchmarks" / "data" / f"reviews_{kind}.tsv" for kind in ("products", "films", "restaurants")]


def pooled_split(texts: list, labels: list, groups: list, n_upload: int, seed: int) -> tuple[list, list]:
    """Rows shuffled by seed: the first `n_upload` are uploaded; the rest are scored, per group (file or kind)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    upload = [(texts[i], labels[i]) for i in order[:n_upload]]
    unseen = [(group, [(texts[i], labels[i]) for i in order[n_upload:] if groups[i] == group]) for group in dict.fromkeys(groups)]
    return upload, unseen


def reviews_upload(n_upload: int, seed: int, task: str = "sentiment") -> tuple[list, list, str]:
    """The upload mixes the three kinds; the unseen rows are scored per kind (products, films, restaurants),
    so that each kind's score can be set beside the frozen-MiniLM baseline's on the same kind.
    task "kind" labels each review by its kind instead: a task that is not sentiment (three classes)."""
    texts, labels, kinds = [], [], []
    for path in REVIEW_FILES:
        rows = read_labelled_text(path, sentiment=True)
        kind = path.stem.removeprefix("reviews_")
        texts += rows.texts
        labels += rows.labels if task == "sentiment" else [kind] * len(rows.texts)
        kinds += [kind] * len(rows.texts)
    upload, unseen = pooled_split(texts, labels, kinds, n_upload, seed)
    labelled = "by sentiment" if task == "sentiment" else "by kind"
    return upload, unseen, f"{len(upload)} product, film and restaurant reviews labelled {labelled} (CSV)"


def sst2_upload(n_upload: int, seed: int, data_dir: str | None) -> tuple[list, list, str]:
    dev = read_labelled_text(find_data_file("sst2/dev.tsv", data_dir), sentiment=True)
    order = np.random.default_rng(seed).permutation(len(dev.texts))
    upload = [(dev.texts[i], dev.labels[i]) for i in order[:n_upload]]
    unseen = [(dev.texts[i], dev.labels[i]) for i in order[n_upload:]]
    reviews = read_labelled_text(ROOT / "benchmarks" / "data" / "reviews.tsv", sentiment=True)
    return upload, [("sst2_dev", unseen), ("reviews_tsv", list(zip(reviews.texts, reviews.labels)))], \
        f"{len(upload)} SST-2 dev sentences (CSV)"


def files_upload(paths: list[str], n_upload: int, seed: int) -> tuple[list, list, str]:
    """Rows of several labelled files, pooled and shuffled; labels as written (as a user's upload has them)."""
    texts, labels, names = [], [], []
    for path in paths:
        rows = read_labelled_text(path)
        texts += rows.texts
        labels += rows.labels
        names += [Path(path).stem] * len(rows.texts)
    if n_upload >= len(texts):
        raise SystemExit(f"--n-upload {n_upload} leaves no unseen rows out of {len(texts)}")
    upload, unseen = pooled_split(texts, labels, names, n_upload, seed)
    return upload, unseen, f"{len(upload)} rows of {', '.join(Path(p).name for p in paths)} (CSV)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--upload", choices=("reviews", "sst2"), default="reviews")
    parser.add_argument("--files", nargs="+", default=None, help="labelled files of your own, instead of --upload")
    parser.add_argument("--task", choices=("sentiment", "kind"), default="sentiment",
                        help="reviews only: label them by sentiment, or by kind (products/films/restaurants)")
    parser.add_argument("--n-upload", type=int, default=None, help="rows uploaded (default 1,000 reviews or 600 SST-2)")
    parser.add_argument("--seed", type=int, default=0, help="which rows are uploaded")
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--label-names", default=None, metavar="NEG,POS",
                        help="write the labels under other names (say 0,1): the model cannot start from sst2's head")
    parser.add_argument("--set", action="append", default=[], help="any TextFinetuneConfig field, as name=value")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.files:
        upload, unseen_sets, described = files_upload(args.files, args.n_upload or 1000, args.seed)
    elif args.upload == "reviews":
        upload, unseen_sets, described = reviews_upload(args.n_upload or 1000, args.seed, args.task)
    else:
        upload, unseen_sets, described = sst2_upload(args.n_upload or 600, args.seed, args.data_dir)
    if args.label_names:
        rename = dict(zip(("negative", "positive"), args.label_names.split(",")))
        upload = [(text, rename[label]) for text, label in upload]
        unseen_sets = [(name, [(text, rename[label]) for text, label in rows]) for name, rows in unseen_sets]
    config = TextFinetuneConfig()
    for name in ("strategy", "backbone"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    for item in args.set:
        name, value = item.split("=", 1)
        setattr(config, name, type(getattr(config, name))(value))
    scores = {}
    with tempfile.TemporaryDirectory(prefix="minilab-bench-") as tmp:
        path = Path(tmp) / "reviews.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(upload)
        started = time.perf_counter()
        result = finetune_text_classifier([path], config, Path(tmp) / "model")
        seconds = time.perf_counter() - started
        predictor = load_text_classifier(result["folder"])
        for name, rows in unseen_sets:
            scores[name] = evaluate_predictor(predictor, [text for text, _ in rows], [label for _, label in rows])
    n = sum(score["n"] for score in scores.values())
    accuracy = sum(score["accuracy"] * score["n"] for score in scores.values()) / n
    print(json.dumps({"benchmark": "finetune_text", "upload": described, "threads": args.threads, "seed": args.seed,
                      "strategy": config.strategy, "encoder": result["metrics"].get("encoder"),
                      "cv_accuracy_by_encoder": result["metrics"].get("cv_accuracy_by_encoder"),
                      "seconds_from_click": round(seconds, 1), "val_accuracy": result["metrics"]["val_accuracy"],
                      **{f"unseen_{name}_accuracy": round(score["accuracy"], 4) for name, score in scores.items()},
                      **{f"n_unseen_{name}": score["n"] for name, score in scores.items()},
                      "unseen_accuracy": round(accuracy, 4),
                      "targets": {"within_30_s": seconds <= 30, "unseen_accuracy_at_least_0.92": accuracy >= 0.92}}))


if __name__ == "__main__":
    main()
