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


def shape(kind: str, rng: random.Random, size: int = 64) -> Image.Image:
    """A circle, square or triangle of random colour, size and place on a random pale background."""
    background = tuple(rng.randint(200, 255) for _ in range(3))
    colour = tuple(rng.randint(0, 150) for _ in range(3))
    canvas = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(canvas)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        angle = rng.uniform(0, math.pi / 2)
        draw.polygon([(cx + r * math.cos(angle + k * math.pi / 2), cy + r * math.sin(angle + k * math.pi / 2)) for k in range(4)], fill=colour)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        draw.polygon([(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)], fill=colour)
    return canvas


def shapes_zip(per_class: int = 24) -> None:
    """The Fine-tune tab's example upload: shapes/circle, shapes/square, shapes/triangle."""
    import io
    import zipfile

    rng = random.Random(0)
    with zipfile.ZipFile(HERE / "shapes.zip", "w", zipfile.ZIP_STORED) as archive:
        for kind in ("circle", "square", "triangle"):
            for i in range(per_class):
                buffer = io.BytesIO()
                shape(kind, rng).save(buffer, format="PNG", optimize=True)
                archive.writestr(f"shapes/{kind}/{kind}_{i:02d}.png", buffer.getvalue())


if __name__ == "__main__":
    shapes_zip()
    for digit, seed in [("3", 1), ("7", 2), ("4", 3)]:
        handwritten_digit(digit, seed).save(HERE / f"digit_{digit}.png")
    for name, image in photos().items():
        image.save(HERE / f"{name}.jpg", quality=88)
    print(sorted(p.name for p in HERE.iterdir() if p.suffix in (".png", ".jpg")))
