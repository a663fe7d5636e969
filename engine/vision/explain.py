"""Why did the network say that? Grad-CAM heatmaps, and a ConvNetJS-style look at filters and activations.

Grad-CAM (Selvaraju et al., 2017): weight the chosen layer's feature maps by the gradient of the class
score, average over channels, keep the positive part. Models without a convolutional layer (vision
transformers) get a smoothed input-gradient saliency map instead.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from engine.images import load_image
from engine.vision.classify import ImageClassifier


# Several users may explain images with the same model at once (each request is a thread). So Grad-CAM never
# changes the shared model while it runs: one forward hook per layer, added once and never removed, keeps a
# layer's output only for the thread that asked for it, and gradients come from torch.autograd.grad, which
# writes nothing into the parameters' .grad.
_capture = threading.local()
_hook_lock = threading.Lock()


def _keep_for_asking_thread(module, _inputs, output) -> None:
    if getattr(_capture, "layer", None) is module:
        _capture.maps = output[0] if isinstance(output, tuple) else output


def _ensure_capture_hook(layer: torch.nn.Module) -> None:
    with _hook_lock:
        if not getattr(layer, "_minilab_capture_hook", False):
            layer.register_forward_hook(_keep_for_asking_thread)
            layer._minilab_capture_hook = True


def grad_cam(classifier: ImageClassifier, tensor: torch.Tensor, class_index: int) -> np.ndarray:
    """Heatmap in [0, 1] with the input's height and width, for one prepared image tensor (C, H, W)."""
    x = tensor.unsqueeze(0).to(classifier.device).requires_grad_(True)
    layer = classifier.gradcam_layer
    if layer is not None:
        _ensure_capture_hook(layer)
    _capture.layer, _capture.maps = layer, None
    try:
        with torch.enable_grad():
            score = classifier.single_view_logits(x)[0, class_index]  # one view, so the hook sees the maps we explain
            maps = _capture.maps
            if maps is not None and maps.dim() == 4 and maps.requires_grad:
                (grad,) = torch.autograd.grad(score, maps)
            else:
                maps, grad = None, torch.autograd.grad(score, x)[0]
    finally:
        _capture.layer, _capture.maps = None, None
    if maps is not None:
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * maps).sum(1, keepdim=True)).detach()
        if float(cam.max()) <= 0:  # nothing pushes towards the class: show where anything does
            cam = (weights.abs() * maps).sum(1, keepdim=True).abs().detach()
    else:
        cam = grad.abs().amax(1, keepdim=True)
        cam = F.avg_pool2d(cam, 9, stride=1, padding=4)
    cam = F.interpolate(cam.float(), size=tensor.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    return (cam / cam.max().clamp_min(1e-8)).detach().cpu().numpy()


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45, size: int = 256) -> Image.Image:
    """The heatmap in the 'jet' colours over the image, both resized to size x size."""
    base = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    heat = Image.fromarray((heatmap * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    coloured = colormaps["jet"](np.asarray(heat) / 255.0)[:, :, :3]
    blended = (1 - alpha) * np.asarray(base, dtype=np.float32) / 255.0 + alpha * coloured
    return Image.fromarray((np.clip(blended, 0, 1) * 255).astype(np.uint8))


def square_view(image) -> Image.Image:
    """The centre square of the user's image: what a photo model looks at, for overlays."""
    image = load_image(image)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _tile(maps: np.ndarray, columns: int, cell: int, cmap: str | None) -> Image.Image:
    """(N, H, W) arrays, each scaled to [0, 1] on its own, tiled into one picture with 2 px gaps."""
    count = len(maps)
    rows = int(np.ceil(count / columns))
    gap = 2
    canvas = np.ones((rows * (cell + gap) + gap, columns * (cell + gap) + gap, 3), dtype=np.float32)
    for index, single in enumerate(maps):
        low, high = float(single.min()), float(single.max())
        norm = (single - low) / (high - low) if high > low else np.zeros_like(single)
        if cmap is None and norm.ndim == 3:
            pixels = norm
        else:
            pixels = colormaps[cmap or "viridis"](norm)[:, :, :3]
        picture = np.asarray(Image.fromarray((pixels * 255).astype(np.uint8)).resize((cell, cell), Image.Resampling.NEAREST))
        r, c = divmod(index, columns)
        canvas[gap + r * (cell + gap) : gap + r * (cell + gap) + cell, gap + c * (cell + gap) : gap + c * (cell + gap) + cell] = picture / 255.0
    return Image.fromarray((canvas * 255).astype(np.uint8))


def first_layer_filters(model: torch.nn.Module) -> Image.Image:
    """The stem's 3x3 kernels: in colour for RGB inputs, in grey for one channel."""
    weights = model.first_conv.weight.detach().cpu().numpy()  # (out, in, k, k)
    if weights.shape[1] == 3:
        maps = weights.transpose(0, 2, 3, 1)  # to (out, k, k, 3)
        return _tile(maps, columns=8, cell=32, cmap=None)
    return _tile(weights[:, 0], columns=8, cell=32, cmap="gray")


@torch.no_grad()
def stage_activations(model: torch.nn.Module, tensor: torch.Tensor, per_stage: int = 16) -> list[tuple[Image.Image, str]]:
    """Each stage's strongest feature maps for this image, as (picture, caption) pairs."""
    device = next(model.parameters()).device
    _, activations = model.forward_with_activations(tensor.unsqueeze(0).to(device))
    pictures = []
    for index, act in enumerate(activations):
        maps = act[0].cpu()
        strongest = maps.mean(dim=(1, 2)).argsort(descending=True)[:per_stage]
        name = "stem" if index == 0 else f"stage {index}"
        caption = f"{name}: {maps.shape[0]} maps of {maps.shape[1]}x{maps.shape[2]} (strongest {len(strongest)})"
        pictures.append((_tile(maps[strongest].numpy(), columns=8, cell=40, cmap="viridis"), caption))
    return pictures
