"""Procedural glyphs: an endless supply of pen-stroke images, to pretrain a backbone for drawings without real data.

A class is a random glyph: one to three cubic Bezier strokes (a closed loop now and then, a stroke that starts
where the last one ended now and then). An example of a class is that glyph written again: its control points
jittered, slanted, rotated and stretched a little, drawn with a pen of random width, then scaled to fit a
20-pixel box and centred in 28x28, which is how MNIST prepared its digits. A network that learns to tell a
thousand such glyphs apart has learnt strokes, ends, loops and crossings, the parts that handwritten digits,
letters and symbols share, without seeing any of them; fine-tuned on a user's 500 drawings it starts from
there instead of from photos (the cifar10 backbone) or from nothing.

Rendering is plain tensor maths: every pixel's distance to the nearest point sampled along the strokes,
turned into ink with an antialiased edge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class GlyphConfig:
    n_classes: int = 1000
    size: int = 28  # image side in pixels
    box: float = 20.0  # the glyph is scaled so its longer side fits this many pixels, as in MNIST
    max_strokes: int = 3
    points_per_stroke: int = 64  # samples along each Bezier curve: dense enough that no stroke looks beaded
    jitter: float = 0.06  # per-example noise on control points, as a fraction of the glyph's box
    max_rotate: float = 12.0  # degrees
    max_shear: float = 0.3
    max_stretch: float = 0.15  # +/- relative change of width against height
    pen: tuple[float, float] = (0.7, 1.6)  # pen radius range in pixels
    seed: int = 0  # picks the glyphs (the classes); examples draw from their own generator


def make_glyphs(config: GlyphConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(control points (C, S, 4, 2) in the unit square, stroke mask (C, S)): the classes."""
    gen = torch.Generator().manual_seed(config.seed)
    c, s = config.n_classes, config.max_strokes
    points = torch.rand(c, s, 4, 2, generator=gen) * 0.8 + 0.1
    n_strokes = torch.randint(1, s + 1, (c,), generator=gen)
    mask = torch.arange(s)[None, :] < n_strokes[:, None]
    closed = torch.rand(c, s, generator=gen) < 0.2  # loops: the stroke ends where it began (0, 6, 8, 9, o, e)
    points[..., 3, :] = torch.where(closed[..., None], points[..., 0, :], points[..., 3, :])
    joined = torch.rand(c, s, generator=gen) < 0.5  # pen not lifted: the next stroke starts at the last one's end
    for k in range(1, s):
        points[:, k, 0] = torch.where(joined[:, k, None], points[:, k - 1, 3], points[:, k, 0])
    return points, mask


def bezier(control: torch.Tensor, n: int) -> torch.Tensor:
    """Points along cubic Bezier curves: control (..., 4, 2) -> (..., n, 2)."""
    t = torch.linspace(0, 1, n)
    basis = torch.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], dim=1)  # (n, 4)
    return torch.einsum("nk,...kd->...nd", basis, control)


def render(control: torch.Tensor, mask: torch.Tensor, config: GlyphConfig, gen: torch.Generator) -> torch.Tensor:
    """Draw one example of each glyph given: control (B, S, 4, 2), mask (B, S) -> uint8 (B, 1, size, size)."""
    b = control.shape[0]
    control = control + torch.randn(control.shape, generator=gen) * config.jitter
    points = bezier(control, config.points_per_stroke) - 0.5  # (B, S, P, 2), centred on the origin
    # A random slant, rotation and stretch per example: the same glyph by another hand.
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(config.max_rotate)
    shear = (torch.rand(b, generator=gen) * 2 - 1) * config.max_shear
    stretch = 1 + (torch.rand(b, generator=gen) * 2 - 1) * config.max_stretch
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    shape = torch.zeros(b, 2, 2)
    shape[:, 0, 0], shape[:, 0, 1], shape[:, 1, 1] = stretch, shear, 1 / stretch
    points = torch.einsum("bij,bspj->bspi", rotation @ shape, points)
    # Fit the longer side of the ink's bounding box to `box` pixels and centre it, as MNIST did.
    valid = mask[:, :, None, None].expand_as(points)
    low = torch.where(valid, points, torch.inf).amin(dim=(1, 2))  # (B, 2)
    high = torch.where(valid, points, -torch.inf).amax(dim=(1, 2))
    pen = config.pen[0] + torch.rand(b, generator=gen) * (config.pen[1] - config.pen[0])
    scale = (config.box - 2 * pen) / (high - low).amax(dim=1).clamp(min=1e-3)
    centre = (config.size - 1) / 2
    points = (points - ((low + high) / 2)[:, None, None]) * scale[:, None, None, None] + centre
    points = torch.where(valid, points, torch.tensor(-1e4))  # strokes a glyph does not have are far away
    # Ink: 1 within the pen's radius of the stroke, fading to 0 over a pixel and a half (antialiased, as scanned).
    grid = torch.stack(torch.meshgrid(torch.arange(config.size), torch.arange(config.size), indexing="xy"), -1)
    pixels = grid.reshape(1, -1, 2).float()  # (1, H*W, 2) as (x, y)
    distance = torch.cdist(pixels.expand(b, -1, -1), points.reshape(b, -1, 2)).amin(dim=2)  # (B, H*W)
    ink = ((pen[:, None] + 1.0 - distance) / 1.5).clamp(0, 1)
    return (ink * 255).round().to(torch.uint8).reshape(b, 1, config.size, config.size)


def glyph_dataset(config: GlyphConfig, per_class: int, seed: int, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` examples of every glyph, shuffled: (uint8 images (N, 1, size, size), labels (N,))."""
    control, mask = make_glyphs(config)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(config.n_classes).repeat(per_class)
    labels = labels[torch.randperm(len(labels), generator=gen)]
    images = torch.cat([render(control[labels[i:i + batch]], mask[labels[i:i + batch]], config, gen)
                        for i in range(0, len(labels), batch)])
    return images, labels
