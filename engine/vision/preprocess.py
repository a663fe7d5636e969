"""Turn a user's image into the tensor a shipped model expects, as written in its card's preprocessing.

Photos are centre-cropped to a square and resized. Digits are made to look like MNIST: white ink on black,
strokes thickened to MNIST's width, the digit scaled into a 20x20 box and centred by its centre of mass
in a 28x28 frame (LeCun et al.'s recipe), so drawings from the browser's sketchpad are recognised.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from engine.errors import UserError
from engine.images import load_image


def prepare_rgb(image: Image.Image, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """RGB PIL -> normalised float tensor (3, size, size)."""
    side = min(image.size)
    tensor = TF.to_image(image)
    tensor = TF.center_crop(tensor, [side, side])
    tensor = TF.resize(tensor, [size, size], antialias=True)
    tensor = TF.to_dtype(tensor, torch.float32, scale=True)
    return TF.normalize(tensor, mean, std)


def _ink_map(image: Image.Image) -> np.ndarray:
    """Float array in [0, 1] where 1 is ink. Transparent canvases: ink is where something was drawn.
    Opaque images: dark-on-light is inverted so the ink is bright, as in MNIST."""
    if image.mode == "RGBA":
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
        if alpha.min() < 0.98:
            return alpha
        image = image.convert("RGB")
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return 1.0 - grey if np.median(border) > 0.5 else grey


def digit_to_mnist(image: Image.Image, size: int = 28, box: int | None = None) -> np.ndarray:
    """An image of one digit -> (size, size) float array in [0, 1], white digit on black, MNIST style.
    The digit fits a box of 20/28 of the frame (20 px in MNIST's 28)."""
    box = box or max(1, round(size * 20 / 28))
    ink = _ink_map(image)
    if ink.max() < 0.15 or (ink > 0.5 * ink.max()).sum() < 4:
        raise UserError("The drawing is empty: draw a digit (0-9) in the sketchpad first.")
    ink = np.where(ink > 0.1 * ink.max(), ink, 0.0)
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Work at about 100 px so the stroke can be thickened cheaply (dilation = max pooling).
    scale = 100.0 / max(crop.shape)
    size_hw = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
    work = F.interpolate(torch.from_numpy(crop)[None, None], size=size_hw, mode="bilinear", align_corners=False)
    mask = (work > 0.5).float()
    eroded = -F.max_pool2d(-mask, 3, stride=1, padding=1)
    edges = (mask - eroded).sum().item()
    thickness = 2.0 * mask.sum().item() / max(1.0, edges)
    wanted = 0.13 * max(size_hw)  # MNIST strokes are about 2.5 px in a 20 px box
    if thickness < wanted:
        grow = min(int(round(wanted - thickness)) | 1, 15)
        work = F.max_pool2d(F.pad(work, [grow // 2] * 4), grow, stride=1, padding=grow // 2)
    work = work[0, 0].clamp(0, 1).numpy()
    work = Image.fromarray((work * 255).astype(np.uint8))
    # Fit the longer side into the box, keeping the aspect ratio.
    factor = box / max(work.size)
    small = work.resize((max(1, round(work.width * factor)), max(1, round(work.height * factor))), Image.Resampling.LANCZOS)
    digit = np.clip(np.asarray(small, dtype=np.float32) / 255.0, 0, 1)
    # Centre of mass at the frame's centre.
    frame = np.zeros((size, size), dtype=np.float32)
    ys, xs = np.indices(digit.shape)
    total = digit.sum()
    cy, cx = (ys * digit).sum() / total, (xs * digit).sum() / total
    top = int(round(size / 2 - cy))
    left = int(round(size / 2 - cx))
    top = min(max(top, 0), size - digit.shape[0])
    left = min(max(left, 0), size - digit.shape[1])
    frame[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return frame


def prepare_digit(image: Image.Image, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    frame = digit_to_mnist(image, size)
    return (torch.from_numpy(frame).unsqueeze(0) - mean[0]) / std[0]


def prepare(image, preprocessing: dict) -> torch.Tensor:
    """Card-driven preprocessing for shipped and fine-tuned models: any image source -> (C, H, W)."""
    kind = preprocessing.get("kind", "rgb")
    size = int(preprocessing.get("size", 32))
    mean, std = preprocessing.get("mean", [0.5] * 3), preprocessing.get("std", [0.25] * 3)
    if kind == "digit":
        return prepare_digit(load_image(image, keep_alpha=True), size, mean, std)
    if kind == "rgb":
        return prepare_rgb(load_image(image), size, mean, std)
    raise UserError(f"Unknown preprocessing kind {kind!r} in the model card.")


def show_input(tensor: torch.Tensor, preprocessing: dict) -> Image.Image:
    """What the network actually sees, un-normalised, for the UI."""
    mean = torch.tensor(preprocessing.get("mean", [0.5])).view(-1, 1, 1)
    std = torch.tensor(preprocessing.get("std", [0.25])).view(-1, 1, 1)
    pixels = ((tensor.cpu() * std + mean).clamp(0, 1) * 255).byte()
    return v2.functional.to_pil_image(pixels)
