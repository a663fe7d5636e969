"""The issue's yardstick for the image fine-tune: a 30-line CNN trained from scratch for 43 s on the upload.

The issue says: "a 30-line CNN trained from scratch for 43 s on 500 MNIST digits scores 98.9% on 4,500 unseen
ones on this machine; minilab's defaults must do at least as well on any such upload". This script trains
such a network (two conv layers, two dense, dropout, Adam: the classic Keras/PyTorch MNIST example) on the
same 500 digits that benchmarks/finetune_images.py uploads for a seed, with the same options (--invert,
--background photos), and scores it on the same unseen digits, so the two JSON lines can be set side by side.
It reads arrays, not the zip: it is a yardstick, not a path through minilab.

    python benchmarks/reference_cnn.py --seed 0                       # plain, as the classic example trains
    python benchmarks/reference_cnn.py --seed 0 --augment             # with random shifts, turns and zooms
    python benchmarks/reference_cnn.py --seed 0 --background photos   # MNIST-M-style colour digits
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_images import draw_upload, upload_digits


def reference_cnn(channels: int, n_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, n_classes))


def random_affine(x: torch.Tensor, turn: float = 0.17, zoom: float = 0.1, shift: float = 0.125) -> torch.Tensor:
    """Each image turned by up to `turn` radians, zoomed by up to `zoom`, shifted by up to `shift` of its side."""
    n = len(x)
    angle, scale = (torch.rand(n) * 2 - 1) * turn, 1 + (torch.rand(n) * 2 - 1) * zoom
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = scale * angle.cos(), -scale * angle.sin()
    theta[:, 1, 0], theta[:, 1, 1] = scale * angle.sin(), scale * angle.cos()
    theta[:, :, 2] = (torch.rand(n, 2) * 2 - 1) * shift * 2  # affine_grid's coordinates span 2 per side
    return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="which 50 digits per class are uploaded (as finetune_images.py)")
    parser.add_argument("--seconds", type=float, default=43.0)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--invert", action="store_true")
    parser.add_argument("--background", choices=("plain", "photos"), default="plain")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = upload_digits("test", args.invert, args.background, args.data_dir)
    upload_idx, unseen = draw_upload(labels, args.seed)

    def as_tensor(idx):
        """Pixels in 0-1, channels first: (N, 1 or 3, 28, 28)."""
        return torch.tensor(images[idx]).reshape(len(idx), 28, 28, -1).permute(0, 3, 1, 2).float() / 255

    x, y = as_tensor(upload_idx), torch.tensor(labels[upload_idx]).long()
    model = reference_cnn(x.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    started, epochs = time.perf_counter(), 0
    while time.perf_counter() - started < args.seconds:
        model.train()
        for batch in torch.randperm(len(x)).split(64):
            inputs = random_affine(x[batch]) if args.augment else x[batch]
            loss = F.cross_entropy(model(inputs), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs += 1
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        x_unseen = as_tensor(unseen)
        predicted = torch.cat([model(x_unseen[i:i + 500]).argmax(1) for i in range(0, len(x_unseen), 500)])
    accuracy = (predicted == torch.tensor(labels[unseen]).long()).float().mean().item()
    print(json.dumps({"benchmark": "reference_cnn", "seed": args.seed, "augment": args.augment, "invert": args.invert,
                      "background": args.background, "threads": args.threads, "train_seconds": round(seconds, 1),
                      "epochs": epochs, "n_upload": len(upload_idx), "unseen_accuracy": round(accuracy, 4),
                      "n_unseen": len(unseen)}))


if __name__ == "__main__":
    main()
