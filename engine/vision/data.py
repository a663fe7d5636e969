"""The training sets of the shipped image models, read from ../shared/data, and a stratified split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CIFAR10_FILE = "cifar10-subset/cifar10_subset.npz"
MNIST_FILE = "mnist/mnist_subset.npz"
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def find_data_file(relative: str, data_dir: str | Path | None) -> Path:
    path = Path(data_dir or SHARED_DATA) / relative
    if not path.is_file():
        raise UserError(f"Training data not found at {path}: pass --data-dir pointing at the shared data folder.")
    return path


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices for train and validation with each class in both, in the same proportion."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * val_fraction)) if len(members) > 1 else 0
        if val_fraction > 0 and len(members) > 1:
            n_val = max(1, n_val)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def load_cifar10(data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """5,085 images as uint8 (N,3,32,32) and labels; the test split is hidden, so only train is here."""
    with np.load(find_data_file(CIFAR10_FILE, data_dir)) as data:
        images, labels = data["x_train"], data["y_train"]
        classes = [str(name) for name in data["classes"]] if "classes" in data else CIFAR10_LABELS
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), classes


def load_mnist(data_dir: str | Path | None = None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """MNIST digits as uint8 (N,1,28,28); split 'train' (3,678) or 'test' (5,000)."""
    with np.load(find_data_file(MNIST_FILE, data_dir)) as data:
        images, labels = data[f"x_{split}"], data[f"y_{split}"]
    images = images.reshape(-1, 1, 28, 28)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), [str(d) for d in range(10)]
