"""Image classifiers behind one small interface, whatever their origin.

- ShippedClassifier: a minilab model folder (the shipped cifar10/mnist, or a fine-tune), card-driven.
- TorchvisionClassifier: an ImageNet model through torchvision's weights API.
- TransformersClassifier: any Hugging Face `image-classification` model id (or a local folder of one).

Each one turns a user image into a tensor (`prepare`), tensors into logits (`logits`), and names its
Grad-CAM layer, so top-k, batch mode and explanations are written once for all of them.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from engine.checkpoints import load_model
from engine.errors import UserError
from engine.images import load_image
from engine.safe_import import import_names
from engine.vision import preprocess
from engine.vision.tta import tta_logits


def last_conv(model: nn.Module) -> nn.Module | None:
    convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    return convs[-1] if convs else None


class ImageClassifier(ABC):
    name: str = ""
    source: str = ""
    labels: list[str] = []
    card: dict = {}
    model: nn.Module
    gradcam_layer: nn.Module | None = None
    input_kind: str = "rgb"  # "digit" models want a drawing

    @abstractmethod
    def prepare(self, image) -> torch.Tensor:
        """Any image source -> the (C, H, W) tensor this model expects."""

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)

    def single_view_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of one forward pass of the batch as it is (no test-time views): what Grad-CAM explains."""
        return self.logits(batch)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def predict_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(batch.to(self.device)).float(), dim=-1).cpu()

    def classify(self, image, top_k: int = 5) -> dict:
        """One image -> top-k {label: probability}, the network's input and the time it took."""
        started = time.perf_counter()
        tensor = self.prepare(image)
        probs = self.predict_tensors(tensor.unsqueeze(0))[0]
        milliseconds = (time.perf_counter() - started) * 1000
        return {"top": top_labels(probs, self.labels, top_k), "input": tensor, "ms": milliseconds,
                "class_index": int(probs.argmax())}

    def classify_many(self, images: list, names: list[str], top_k: int = 5, batch_size: int = 32) -> list[dict]:
        """Batch mode: one row per image; images that cannot be read get an error row, not an exception."""
        rows, ready = [], []
        for image, name in zip(images, names):
            try:
                ready.append((name, self.prepare(image)))
            except UserError as error:
                rows.append({"file": name, "error": str(error)})
        for start in range(0, len(ready), batch_size):
            chunk = ready[start : start + batch_size]
            probs = self.predict_tensors(torch.stack([tensor for _, tensor in chunk]))
            for (name, _), row in zip(chunk, probs):
                top = top_labels(row, self.labels, top_k)
                best = next(iter(top))
                rows.append({"file": name, "label": best, "probability": top[best], "top": top, "error": ""})
        order = {name: index for index, name in enumerate(names)}
        return sorted(rows, key=lambda row: order.get(row["file"], 0))


def top_labels(probs: torch.Tensor, labels: list[str], k: int) -> dict[str, float]:
    values, indices = probs.topk(min(k, len(probs)))
    return {labels[i] if i < len(labels) else str(i): float(v) for v, i in zip(values.tolist(), indices.tolist())}


class ShippedClassifier(ImageClassifier):
    """A minilab model folder: weights.safetensors + card.json."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", name: str | None = None):
        self.model, self.card = load_model(folder, device)
        self.model = self.model.to(memory_format=torch.channels_last)  # faster convolutions on CPUs (oneDNN)
        if self.card["task"] != "image-classification":
            raise UserError(f"{Path(folder).name} is a {self.card['task']} model, not an image classifier.")
        self.name = name or self.card["name"]
        self.source = "shipped"
        self.labels = list(self.card["labels"])
        self.preprocessing = self.card["preprocessing"]
        self.input_kind = self.preprocessing.get("kind", "rgb")
        self.gradcam_layer = getattr(self.model, "gradcam_layer", None) or last_conv(self.model)

    def prepare(self, image) -> torch.Tensor:
        return preprocess.prepare(image, self.preprocessing)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return tta_logits(self.model, batch, flip=bool(self.preprocessing.get("tta_flip")),
                          shift=int(self.preprocessing.get("tta_shift", 0)))

    def single_view_logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)

    def show_input(self, tensor: torch.Tensor):
        return preprocess.show_input(tensor, self.preprocessing)


class TorchvisionClassifier(ImageClassifier):
    """An ImageNet classifier from torchvision's weights API; loads only from the local cache when offline."""

    def __init__(self, arch: str, device: torch.device | str = "cpu", allow_download: bool = False):
        import torchvision

        weights = torchvision.models.get_model_weights(arch).DEFAULT
        if not allow_download and not torchvision_weights_cached(weights):
            raise UserError(f"torchvision {arch}: weights are not in the local cache and cannot be downloaded now.")
        self.model = torchvision.models.get_model(arch, weights=weights).to(device).eval()
        self.transforms = weights.transforms()
        self.name = f"torchvision/{arch}"
        self.source = "hub"
        self.labels = list(weights.meta["categories"])
        self.card = {"name": self.name, "task": "image-classification", "architecture": arch,
                     "training_data": "ImageNet-1k", "metrics": weights.meta.get("_metrics", {}),
                     "parameters": weights.meta.get("num_params"), "description": weights.meta.get("_docs", "")}
        self.gradcam_layer = last_conv(self.model)

    def prepare(self, image) -> torch.Tensor:
        return self.transforms(load_image(image))


def torchvision_weights_cached(weights) -> bool:
    import os

    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url)))


class TransformersClassifier(ImageClassifier):
    """Any Hugging Face image-classification model: a hub id (cached, or downloaded when online) or a local folder."""

    def __init__(self, model_id: str, device: torch.device | str = "cpu", local_files_only: bool = True):
        AutoImageProcessor, AutoModelForImageClassification = import_names(
            "transformers", "AutoImageProcessor", "AutoModelForImageClassification")

        try:
            self.processor = AutoImageProcessor.from_pretrained(model_id, local_files_only=local_files_only)
            self.model = AutoModelForImageClassification.from_pretrained(model_id, local_files_only=local_files_only)
        except (OSError, ValueError) as error:
            raise UserError(f"Could not load {model_id!r} as an image classifier: {str(error).splitlines()[0]}") from error
        self.model = self.model.to(device).eval()
        config = self.model.config
        self.name = model_id
        self.source = "hub"
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.card = {"name": model_id, "task": "image-classification", "architecture": config.model_type,
                     "training_data": "see the model's page on the Hugging Face Hub",
                     "parameters": sum(p.numel() for p in self.model.parameters())}
        self.gradcam_layer = last_conv(self.model)

    def prepare(self, image) -> torch.Tensor:
        pixels = self.processor(images=load_image(image), return_tensors="pt")["pixel_values"]
        return pixels[0]

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=batch).logits
