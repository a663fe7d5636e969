"""Fine-tune on upload, images: the issue's target, measured from the click.

Makes the upload a user would make: a zip holding one folder of 10 class folders of PNGs, 50 MNIST digits
per class (500 images). The default backbone is chosen on the upload between glyphs (pretrained on procedurally
drawn pen strokes only) and cifar10 (photos): neither saw a digit. Then runs `finetune_images` with
default settings, reading the zip included in the time, and scores the model it wrote, through the Image
tab's own prediction path (files -> ShippedClassifier), on the other 4,500 MNIST test digits.

    python benchmarks/finetune_images.py --threads 2          # prints one JSON line
    python benchmarks/finetune_images.py --threads 2 --invert # dark digits on white, as drawn on paper
    python benchmarks/finetune_images.py --threads 2 --background photos   # colour digits on photo crops (MNIST-M)
    python benchmarks/reference_cnn.py --seed 0               # the issue's yardstick on the same upload
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.vision.data import find_data_file  # noqa: E402
from engine.vision.finetune import ImageFinetuneConfig, finetune_images  # noqa: E402


def as_picture(image: np.ndarray, side: int = 28) -> Image.Image:
    """A 28x28 digit (grey, or 28x28x3 colour) as a picture file would hold it, resized (bicubic) to `side` pixels."""
    picture = Image.fromarray(image.reshape(28, 28) if image.size == 28 * 28 else image.reshape(28, 28, 3))
    return picture if side == 28 else picture.resize((side, side), Image.BICUBIC)


def make_upload(images: np.ndarray, labels: np.ndarray, folder: Path, side: int = 28) -> Path:
    target = folder / "digits.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, (image, label) in enumerate(zip(images, labels)):
            png = folder / f"{i}.png"
            as_picture(image, side).save(png)
            archive.write(png, f"digits/{label}/{i}.png")
            png.unlink()
    return target


def on_photos(digits: np.ndarray, photos: np.ndarray, seed: int = 123) -> np.ndarray:
    """MNIST-M's recipe (Ganin et al. 2016): each digit blended as |photo - digit| over a random 28x28 crop of a
    colour photo (here CIFAR-10's), so ink and ground take every colour. Returns (N, 28, 28, 3) uint8."""
    rng = np.random.default_rng(seed)
    which, x0, y0 = rng.integers(0, len(photos), len(digits)), rng.integers(0, 5, len(digits)), rng.integers(0, 5, len(digits))
    crops = np.stack([photos[i][:, y:y + 28, x:x + 28].transpose(1, 2, 0) for i, x, y in zip(which, x0, y0)])
    return np.abs(crops.astype(np.int16) - digits[..., None].astype(np.int16)).astype(np.uint8)


def upload_digits(split: str, invert: bool, background: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The digits a benchmark uploads and scores, as the options ask: (images, labels)."""
    with np.load(find_data_file("mnist/mnist_subset.npz", data_dir)) as data:
        images, labels = data[f"x_{split}"].reshape(-1, 28, 28), data[f"y_{split}"]
    if invert:
        images = 255 - images
    if background == "photos":
        with np.load(find_data_file("cifar10-subset/cifar10_subset.npz", data_dir)) as data:
            images = on_photos(images, data["x_train"])
    return images, labels


def describe(args: argparse.Namespace, n: int) -> str:
    return (f"{n} MNIST {args.split} digits{' (inverted)' if args.invert else ''}"
            f"{' on CIFAR-10 photo crops (MNIST-M style)' if args.background == 'photos' else ''}, {args.side} px, in 10 class folders (zip)")


def draw_upload(labels: np.ndarray, seed: int, per_class: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(indices uploaded: `per_class` random digits of each class, indices of every other digit), by seed."""
    rng = np.random.default_rng(seed)
    upload_idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
    return upload_idx, np.setdiff1d(np.arange(len(labels)), upload_idx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--split", choices=["test", "train"], default="test",
                        help="which given MNIST split the upload and the scored digits come from: choose settings on "
                             "'train' (3,678 digits), report on 'test' (5,000), so no setting is tuned on the digits it is scored on")
    parser.add_argument("--seed", type=int, default=0, help="which 50 digits per class are uploaded")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--time-budget", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--val-fraction", type=float, default=None)
    parser.add_argument("--max-rotate", type=float, default=None)
    parser.add_argument("--label-smoothing", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--tta-shift", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="any ImageFinetuneConfig field, as name=value")
    parser.add_argument("--invert", action="store_true", help="dark digits on a light ground (255 - pixel), as drawn on paper")
    parser.add_argument("--side", type=int, default=28, help="save the digits at this many pixels (bicubic), as a scan might")
    parser.add_argument("--background", choices=("plain", "photos"), default="plain",
                        help="photos: colour digits blended over crops of CIFAR-10 photos, as MNIST-M makes them")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = upload_digits(args.split, args.invert, args.background, args.data_dir)
    upload_idx, unseen = draw_upload(labels, args.seed, args.per_class)
    config = ImageFinetuneConfig()
    for name in ("backbone", "strategy", "time_budget", "lr", "val_fraction", "max_rotate", "label_smoothing", "batch_size", "tta_shift", "image_size"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    for item in args.set:
        name, value = item.split("=", 1)
        setattr(config, name, type(getattr(config, name))(value))
    with tempfile.TemporaryDirectory(prefix="minilab-bench-") as tmp:
        tmp = Path(tmp)
        upload = make_upload(images[upload_idx], labels[upload_idx], tmp, args.side)
        started = time.perf_counter()
        result = finetune_images([upload], config, tmp / "work", tmp / "model")
        seconds = time.perf_counter() - started
        from engine.vision.classify import ShippedClassifier

        classifier = ShippedClassifier(result["folder"])
        from engine.vision.finetune import square_uint8  # the same geometry as a PNG through the Image tab

        size = classifier.preprocessing["size"]
        x = torch.stack([square_uint8(as_picture(image, args.side).convert("RGB"), size) for image in images[unseen]])
        from engine.vision.train import normalise

        x = normalise(x, classifier.preprocessing["mean"], classifier.preprocessing["std"])
        probs = torch.cat([classifier.predict_tensors(x[i:i + 500]) for i in range(0, len(x), 500)])
        predicted = [int(classifier.labels[i]) for i in probs.argmax(1).tolist()]
        accuracy = float(np.mean(np.array(predicted) == labels[unseen]))
    metrics = result["metrics"]
    print(json.dumps({"benchmark": "finetune_images", "seed": args.seed, "upload": describe(args, len(upload_idx)),
                      "backbone": metrics["backbone"], "cv_accuracy_by_backbone": metrics.get("cv_accuracy_by_backbone"),
                      "strategy": config.strategy, "threads": args.threads,
                      "seconds_from_click": round(seconds, 1), "read_seconds": metrics["read_seconds"],
                      "epochs": metrics["epochs_run"], "val_accuracy": metrics["val_accuracy"],
                      "unseen_accuracy": round(accuracy, 4), "n_unseen": len(unseen),
                      "targets": {"within_60_s": seconds <= 60, "unseen_accuracy_at_least_0.985": accuracy >= 0.985}}))


if __name__ == "__main__":
    main()
