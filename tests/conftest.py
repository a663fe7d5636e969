"""Shared fixtures. Nothing here needs ../shared or the network: data and models are made on the spot."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MINILAB_OFFLINE", "1")  # tests never reach for the network

from engine.checkpoints import save_model  # noqa: E402
from engine.vision.nets import ResNet, ResNetConfig, resnet_config_dict  # noqa: E402


@pytest.fixture
def tiny_image_model(tmp_path: Path) -> Path:
    """A randomly initialised 2-class ResNet saved as a minilab model folder."""
    torch.manual_seed(0)
    config = ResNetConfig(in_channels=3, num_classes=2, widths=[4, 8, 8], blocks=[1, 1, 1])
    card = {"name": "tiny", "task": "image-classification", "architecture": "resnet",
            "arch_config": resnet_config_dict(config), "labels": ["cat", "dog"],
            "preprocessing": {"kind": "rgb", "size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "tta_flip": True},
            "training_data": "none (random weights, for tests)", "metrics": {}, "command": "tests"}
    return save_model(tmp_path / "tiny", ResNet(config), card)


def render_digit(digit: str, size: int = 200, stroke: int = 6, rotate: float = 0.0) -> Image.Image:
    """A digit drawn in black on white with Pillow's bundled font, like a photo of a handwritten digit."""
    canvas = Image.new("L", (size, size), 255)
    ImageDraw.Draw(canvas).text((size / 2, size / 2), digit, fill=0, font=ImageFont.load_default(size=int(size * 0.7)),
                                anchor="mm", stroke_width=stroke, stroke_fill=0)
    return canvas.rotate(rotate, fillcolor=255).convert("RGB")


def draw_strokes(strokes: list[list[tuple[float, float]]], size: int = 280, width: int = 14, transparent: bool = True) -> Image.Image:
    """Polylines in black, as a browser sketchpad produces them: on a transparent (or white) canvas.
    Coordinates are fractions of the canvas side."""
    background = (0, 0, 0, 0) if transparent else (255, 255, 255, 255)
    canvas = Image.new("RGBA", (size, size), background)
    draw = ImageDraw.Draw(canvas)
    for stroke in strokes:
        points = [(x * size, y * size) for x, y in stroke]
        draw.line(points, fill=(0, 0, 0, 255), width=width, joint="curve")
        for x, y in points:
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=(0, 0, 0, 255))
    return canvas


@pytest.fixture(scope="session")
def shipped_mnist():
    folder = ROOT / "checkpoints" / "mnist"
    if not (folder / "card.json").is_file():
        pytest.fail("checkpoints/mnist is missing: the shipped models must be committed")
    from engine.vision.classify import ShippedClassifier

    return ShippedClassifier(folder)
