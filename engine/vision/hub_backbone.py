"""A hub image model (torchvision weights or a Hugging Face image classifier) as a frozen backbone with a new
last layer: the Fine-tune tab's linear probe on big pretrained networks, used when their weights are cached
or the hub is reachable.

The saved model stores only the new layer; its card names the backbone, which is loaded again (from the
cache) when the model is used. Offline without the weights, loading fails with the reason, like any hub model.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.errors import UserError


def is_hub_backbone(name: str) -> bool:
    return "/" in name


def load_hub_classifier(backbone: str):
    """The registry's own loaders: 'torchvision/<arch>' or a Hugging Face id / local folder."""
    from engine.registry import hf_local_only, host_reachable

    if backbone.startswith("torchvision/"):
        import torchvision

        from engine.vision.classify import TorchvisionClassifier, torchvision_weights_cached

        arch = backbone.split("/", 1)[1]
        try:
            weights = torchvision.models.get_model_weights(arch).DEFAULT
        except (ValueError, KeyError) as error:
            raise UserError(f"torchvision has no model called {arch!r}.") from error
        online = torchvision_weights_cached(weights) or host_reachable(weights.url)[0]
        return TorchvisionClassifier(arch, allow_download=online)
    from engine.vision.classify import TransformersClassifier

    return TransformersClassifier(backbone, local_files_only=hf_local_only(backbone))


def last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute, layer) of the last nn.Linear in definition order: the classifier the probe replaces."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise UserError("This backbone has no linear classifier layer to replace.")
    parent_name, _, attribute = names[-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attribute, getattr(parent, attribute)


def hub_preprocessing(classifier) -> dict:
    """Input size, mean and std from the hub model's own transforms, for minilab's crop-and-resize."""
    transforms = getattr(classifier, "transforms", None)
    if transforms is not None:  # torchvision's ImageClassification preset
        size = transforms.crop_size[0] if isinstance(transforms.crop_size, (list, tuple)) else transforms.crop_size
        return {"size": int(size), "mean": list(transforms.mean), "std": list(transforms.std)}
    processor = classifier.processor
    size = processor.size
    side = size.get("height") or size.get("shortest_edge") or 224
    crop = getattr(processor, "crop_size", None) or {}
    return {"size": int(crop.get("height", side)), "mean": list(processor.image_mean), "std": list(processor.image_std)}


class HubProbe(nn.Module):
    """The hub model with its last linear layer swapped for `head` (n classes); only the head is saved."""

    def __init__(self, arch_config: dict):
        super().__init__()
        self.arch_config = dict(arch_config)
        classifier = load_hub_classifier(arch_config["backbone"])
        self.model = classifier.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        parent, name, old = last_linear(self.model)
        self.head = nn.Linear(old.in_features, int(arch_config["num_classes"]))
        setattr(parent, name, self.head)
        self.preprocessing = hub_preprocessing(classifier)
        self.gradcam_layer = getattr(classifier, "gradcam_layer", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.logits if hasattr(out, "logits") else out

    def saved_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("head.")}

    def load_saved_state(self, state: dict[str, torch.Tensor]) -> None:
        from engine.checkpoints import load_own_state

        load_own_state(self, state)


def build_hub_probe(arch_config: dict) -> HubProbe:
    return HubProbe(arch_config)
