"""Make the image tab's example pictures. Run once; the outputs are committed.

Digits are rendered here with Pillow's bundled font and a wobbly pen, so the drawing-pad model has
something hand-made to try. Photos come from scikit-image's bundled sample images (public domain / CC0),
resized small; none come from minilab's training data.

    pip install scikit-image && python demos/examples/make_examples.py
"""
from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).parent


def handwritten_digit(digit: str, seed: int) -> Image.Image:
    rng = random.Random(seed)
    canvas = Image.new("L", (280, 280), 255)
    font = ImageFont.load_default(size=190)
    draw = ImageDraw.Draw(canvas)
    draw.text((140 + rng.randint(-20, 20), 140 + rng.randint(-15, 15)), digit, fill=0, font=font, anchor="mm",
              stroke_width=rng.randint(4, 7), stroke_fill=0)
    return canvas.rotate(rng.uniform(-12, 12), fillcolor=255, resample=Image.Resampling.BILINEAR).convert("RGB")


def photos() -> dict[str, Image.Image]:
    from skimage import data

    wanted = {"cat": data.chelsea, "astronaut": data.astronaut, "rocket": data.rocket, "coffee": data.coffee}
    out = {}
    for name, loader in wanted.items():
        image = Image.fromarray(loader()).convert("RGB")
        image.thumbnail((320, 320))
        out[name] = image
    return out


if __name__ == "__main__":
    for digit, seed in [("3", 1), ("7", 2), ("4", 3)]:
        handwritten_digit(digit, seed).save(HERE / f"digit_{digit}.png")
    for name, image in photos().items():
        image.save(HERE / f"{name}.jpg", quality=88)
    print(sorted(p.name for p in HERE.iterdir() if p.suffix in (".png", ".jpg")))
