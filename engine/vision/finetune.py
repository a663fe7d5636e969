"""Fine-tune an image classifier on a user's upload, Teachable-Machine style, in under a minute on a CPU.

1. Read the upload (engine.uploads: class folders, or images + a filename,label CSV) and decode every image
   to a small uint8 square with the same crop-and-resize the Image tab uses for predictions.
2. Split it, stratified, into training and validation images.
3. Start from a backbone: a shipped network (its weights, a fresh head) or a network from scratch.
   - "finetune" trains every weight with augmentation (the same loop as the shipped models: SGD, one-cycle,
     EMA), for as many epochs as fit the time budget, measured on this machine before training starts;
   - "probe" computes the backbone's features once and fits only a new linear head (seconds).
4. Report what a user wants to see after: accuracy per class, the confusion matrix, and the validation
   images the model gets most wrong (highest loss first: often mislabelled ones).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from engine.checkpoints import count_parameters, load_model, save_model
from engine.errors import UserError
from engine.images import load_image
from engine.linear_probe import cross_validated_accuracy
from engine.uploads import ClassFolderDataset, check_classes, read_image_upload
from engine.vision.data import stratified_split
from engine.vision.hub_backbone import HubProbe, hub_preprocessing, is_hub_backbone, load_hub_classifier
from engine.vision.nets import ResNet9, ResNet9Config, resnet_config_dict
from engine.vision.train import Augment, VisionTrainConfig, border_pixels, evaluate, fit_classifier, normalise

ProgressFn = Callable[[dict], None]
BACKBONES = ("auto", "cifar10", "glyphs", "mnist", "scratch")  # shipped networks, or none; their weights are in checkpoints/
AUTO_BACKBONES = ("cifar10", "glyphs")  # what "auto" chooses from: photos (the fallback), drawings; neither saw a digit
GREY_BACKBONES = ("glyphs", "mnist")  # light ink on a dark ground, 28 pixels: dark-on-light uploads are inverted for them
AUTO_MARGIN = 0.02  # glyphs must beat cifar10 by this much on the probe
MAX_IMAGES = 20_000
MAX_MISCLASSIFIED = 24


@dataclass
class ImageFinetuneConfig:
    backbone: str = "auto"  # auto (chosen on the upload), a shipped image model, "scratch", or a hub model (torchvision/<arch>, an HF id)
    strategy: str = "finetune"  # "finetune": every weight, with augmentation; "probe": a new head on frozen features
    image_size: int = 0  # side in pixels; 0 = the backbone's own (32 for cifar10, 28 for mnist), or less for smaller uploads
    time_budget: float = 50.0  # seconds of training; the epoch count is chosen to fit it
    max_epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1  # chosen on uploads from the MNIST train split (0.2 / 0.1 / 0.05 / 0.02); pretrained features want a gentle start
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    val_fraction: float = 0.15
    flip: bool = False  # mirror images in training and at test time (right for photos, wrong for digits and letters)
    tta_shift: int = 1  # predictions average the image and its copies moved this many pixels four ways (0 = off)
    max_shift: float = 0.1
    max_rotate: float = 15.0
    max_scale: float = 0.15
    cutout: float = 0.25  # a random square this fraction of the side is blanked in each training image (0 = off)
    seed: int = 0

    def validate(self) -> "ImageFinetuneConfig":
        if self.backbone not in BACKBONES and not is_hub_backbone(self.backbone):
            raise UserError(f"Unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}, "
                            "torchvision/<arch> or a Hugging Face image model id.")
        if is_hub_backbone(self.backbone) and self.strategy != "probe":
            raise UserError("Hub backbones are used frozen here (too big to fine-tune on a CPU in minutes): "
                            "choose the linear probe.")
        if self.strategy not in ("finetune", "probe"):
            raise UserError(f"Unknown strategy {self.strategy!r}; choose finetune or probe.")
        if self.strategy == "probe" and self.backbone == "scratch":
            raise UserError("A linear probe needs a pretrained backbone (auto, cifar10, glyphs or mnist), not scratch.")
        if not 0 <= self.tta_shift <= 4:
            raise UserError(f"The test-time shift must be between 0 and 4 pixels, got {self.tta_shift}.")
        if self.image_size and not 8 <= self.image_size <= 128:
            raise UserError(f"The image size must be between 8 and 128 pixels, got {self.image_size}.")
        if not 0 < self.time_budget <= 3600:
            raise UserError(f"The time budget must be between 1 second and an hour, got {self.time_budget}.")
        if self.max_epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise UserError("Epochs and batch size must be at least 1, the learning rate positive, weight decay not negative.")
        if not 0.05 <= self.val_fraction <= 0.5:
            raise UserError(f"The validation fraction must be between 0.05 and 0.5, got {self.val_fraction}.")
        return self


# ---- 1. the upload as tensors -----------------------------------------------------------------------------


def square_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """The Image tab's geometry (engine.vision.preprocess.prepare_rgb): centre square, resized; kept as uint8."""
    tensor = TF.to_image(image)
    side = min(tensor.shape[-2:])
    return TF.resize(TF.center_crop(tensor, [side, side]), [size, size], antialias=True)


def native_side(files: list[Path], sample: int = 200) -> int | None:
    """The median shorter side of the upload's images (headers only; a sample of them is enough)."""
    sides = []
    for path in files[:: max(1, len(files) // sample)]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return int(np.median(sides)) if sides else None


def decode_images(files: list[Path], size: int, workers: int = 2) -> tuple[list[torch.Tensor | None], list[tuple[str, str]]]:
    """Every file -> a (3, size, size) uint8 tensor, or None with a reason. JPEGs are decoded at a reduced
    scale when they are much bigger than needed; PIL releases the GIL, so two threads decode at once."""

    def one(path: Path) -> torch.Tensor | str:
        try:
            return square_uint8(load_image(path, draft=4 * size), size)
        except UserError as error:
            return str(error)

    with ThreadPoolExecutor(workers) as pool:
        decoded = list(pool.map(one, files))
    failed = [(path.name, result) for path, result in zip(files, decoded) if isinstance(result, str)]
    return [None if isinstance(result, str) else result for result in decoded], failed


@dataclass
class ImageData:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    targets: torch.Tensor  # class indices (N,)
    classes: list[str]
    names: list[str]  # file names, for the misclassified gallery
    skipped: list[tuple[str, str]]


def load_upload(paths: list[str | Path], workdir: str | Path, size: int, largest: int | None = None) -> ImageData:
    """Read and decode an upload, refusing what cannot be trained on with every reason at once.
    With size 0 the side is chosen: the images' own (small uploads such as 28x28 digits train faster at
    their size), at least 16 and at most `largest`."""
    dataset: ClassFolderDataset = read_image_upload(paths, workdir)
    if len(dataset.files) > MAX_IMAGES:
        raise UserError(f"The upload holds {len(dataset.files):,} images; the limit is {MAX_IMAGES:,}.")
    check_classes(dataset.counts())
    if not size:
        size = max(16, min(largest or 32, native_side(dataset.files) or largest or 32))
    tensors, failed = decode_images(dataset.files, size)
    kept = [i for i, tensor in enumerate(tensors) if tensor is not None]
    labels = [dataset.labels[i] for i in kept]
    check_classes({name: labels.count(name) for name in sorted(set(dataset.labels))})
    classes = sorted(set(labels))
    index = {name: i for i, name in enumerate(classes)}
    return ImageData(images=torch.stack([tensors[i] for i in kept]), targets=torch.tensor([index[name] for name in labels]),
                     classes=classes, names=[dataset.files[i].name for i in kept], skipped=dataset.skipped + failed)


# ---- 2. the network ------------------------------------------------------------------------------------


def start_network(backbone: str, n_classes: int, images: torch.Tensor) -> tuple[nn.Module, str, dict, dict]:
    """(model with a fresh head, architecture name, arch_config, preprocessing) for a backbone.
    A grey backbone (glyphs, mnist) gets a 3-channel first layer that sees the mean of the channels, so every
    fine-tuned model takes RGB in, like the Image tab gives it; on a light ground it also sees them inverted."""
    from engine.registry import CHECKPOINTS_DIR

    if is_hub_backbone(backbone):
        model = HubProbe({"backbone": backbone, "num_classes": n_classes})
        return model, "hub-probe", dict(model.arch_config), dict(model.preprocessing)
    if backbone == "scratch":
        pixels = images.float() / 255.0
        mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()
        config = ResNet9Config(in_channels=3, num_classes=n_classes)
        return ResNet9(config), "resnet9", resnet_config_dict(config), {"size": 32, "mean": mean, "std": std}
    folder = CHECKPOINTS_DIR / backbone
    if not (folder / "card.json").is_file():
        raise UserError(f"The {backbone} backbone is missing from {CHECKPOINTS_DIR}.")
    model, card = load_model(folder)
    arch_config = dict(card["arch_config"])
    mean, std = list(card["preprocessing"]["mean"]), list(card["preprocessing"]["std"])
    if arch_config["in_channels"] == 1:
        # Dark ink on a light ground is turned into what the network saw (light on dark) inside the model: with
        # the mean read as 1 - mean, the standardised input is exactly minus that of the inverted image, so the
        # first layer's weights change sign and every later layer sees what it would have. The saved model
        # takes the upload's own images, in the Image tab too, with no extra preprocessing step.
        invert = light_ground(images)
        conv = model.first_conv
        wide = nn.Conv2d(3, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
        with torch.no_grad():
            wide.weight.copy_(conv.weight.repeat(1, 3, 1, 1) / 3 * (-1 if invert else 1))
            if conv.bias is not None:
                wide.bias.copy_(conv.bias)
        model.stem[0] = wide
        mean = [1 - m for m in mean] if invert else mean
        arch_config["in_channels"], mean, std = 3, mean * 3, std * 3
    old = model.head
    model.head = nn.Linear(old.in_features, n_classes, bias=old.bias is not None)
    nn.init.zeros_(model.head.weight)
    if model.head.bias is not None:
        nn.init.zeros_(model.head.bias)
    arch_config["num_classes"] = n_classes
    model.config.num_classes = n_classes
    model.config.in_channels = 3
    return model, card["architecture"], arch_config, {"size": int(card["preprocessing"]["size"]), "mean": mean, "std": std}


# ---- 3. training ---------------------------------------------------------------------------------------


def pooled_features(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The vectors the head sees (after global pooling), captured with a hook on the head."""
    captured: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].float()))
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size])
    finally:
        hook.remove()
    return torch.cat(captured)


def border_median(images: torch.Tensor) -> float:
    """The median of every channel of every image's outermost pixels, 0-255: how bright the ground is."""
    return border_pixels(images.float()).median().item()


def light_ground(images: torch.Tensor) -> bool:
    """Whether a grey backbone (trained on light ink on black) must see this upload inverted."""
    return border_median(images) > 127


def grey_drawings(images: torch.Tensor) -> str | None:
    """"dark" or "light": grey ink on a plain ground, as glyphs were drawn and MNIST was scanned ("dark"), or as
    pen on paper and Gradio's sketchpad draw ("light"); None for anything else. Where there is ink (64 levels or
    more off the ground) the channels must agree within 8 levels on average, and the border must be mostly ground."""
    ground = border_median(images)
    if 64 <= ground <= 191:
        return None
    brightest, darkest = images.float().amax(dim=1), images.float().amin(dim=1)  # over the channels
    ink = brightest > 64 if ground < 64 else darkest < 191
    spread = (brightest - darkest)[ink]
    if spread.numel() and spread.mean() >= 8:
        return None
    return "dark" if ground < 64 else "light"


def choose_backbone(images: torch.Tensor, targets: torch.Tensor, n_classes: int, seed: int) -> tuple[str, dict[str, float]]:
    """cifar10, unless the upload looks like glyphs (grey ink on a plain ground, dark or light) and the glyphs
    network's frozen features fit it clearly better: a logistic regression on them, 3-fold cross-validated on the
    training images, must beat cifar10's by AUTO_MARGIN. On ten uploads of 500 digits glyphs won every time
    (93-96% against 84-89%), and on five of the same digits inverted (dark on white) too. The probe alone is not enough: the
    shapes example (coloured, on white) probed 77% on glyphs and 70% on cifar10, yet fine-tuned to 66% from
    glyphs and 99% from cifar10 on new shapes. Validation images are left out: they only score the result."""
    if grey_drawings(images) is None:
        return AUTO_BACKBONES[0], {}
    scores = {}
    for name in AUTO_BACKBONES:
        model, _, _, preprocessing = start_network(name, n_classes, images)
        features = pooled_features(model, normalise(images, preprocessing["mean"], preprocessing["std"]))
        scores[name] = max(cross_validated_accuracy(features, targets, n_classes, l2, folds=3, seed=seed) for l2 in (0.1, 1.0))
    chosen = AUTO_BACKBONES[0]
    for name in AUTO_BACKBONES[1:]:
        if scores[name] >= scores[chosen] + AUTO_MARGIN:
            chosen = name
    return chosen, scores


def fit_probe(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
              config: ImageFinetuneConfig, on_progress: ProgressFn | None, should_stop: Callable[[], bool]) -> dict:
    """A linear head on frozen features, by full-batch L-BFGS (a convex problem: no learning rate to tune)."""
    started = time.perf_counter()
    scale = getattr(getattr(model, "config", None), "logit_scale", 1.0)
    batch = 32 if isinstance(model, HubProbe) else 256
    train_features, val_features = pooled_features(model, x_train, batch), pooled_features(model, x_val, batch)
    head = model.head
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=20, history_size=20, line_search_fn="strong_wolfe")
    rounds, history = 10, []
    for round_ in range(1, rounds + 1):
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(head(train_features) * scale, y_train) + 1e-3 * head.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            train_logits, val_logits = head(train_features) * scale, head(val_features) * scale
        elapsed = time.perf_counter() - started
        record = {"kind": "epoch", "epoch": round_, "epochs": rounds, "train_loss": F.cross_entropy(train_logits, y_train).item(),
                  "train_acc": (train_logits.argmax(1) == y_train).float().mean().item(),
                  "val_loss": F.cross_entropy(val_logits, y_val).item(), "val_acc": (val_logits.argmax(1) == y_val).float().mean().item(),
                  "elapsed": elapsed, "eta": elapsed / round_ * (rounds - round_)}
        history.append(record)
        if on_progress:
            on_progress(record)
        if should_stop():
            break
    return {"history": history, "epochs_run": len(history), "seconds": round(time.perf_counter() - started, 1),
            "stopped": "stopped by request" if should_stop() else None}


def validation_report(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor, classes: list[str], flip: bool,
                      shift: int) -> dict:
    """Accuracy, per-class accuracy, the confusion matrix (rows: true, columns: predicted) and the worst mistakes,
    with the test-time views the Image tab will use."""
    result = evaluate(model, x_val, y_val, tta_flip=flip, tta_shift=shift)
    logits = result["logits"]
    predicted = logits.argmax(1)
    losses = F.cross_entropy(logits, y_val, reduction="none")
    k = len(classes)
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((y_val.cpu(), predicted.cpu()), torch.ones(len(y_val), dtype=torch.long), accumulate=True)
    per_class = {classes[i]: round(confusion[i, i].item() / max(1, confusion[i].sum().item()), 4) for i in range(k)}
    wrong = [int(i) for i in torch.argsort(losses, descending=True) if predicted[i] != y_val[i]][:MAX_MISCLASSIFIED]
    probs = torch.softmax(logits, 1)
    mistakes = [{"index": i, "true": classes[int(y_val[i])], "predicted": classes[int(predicted[i])],
                 "confidence": round(float(probs[i, predicted[i]]), 4), "loss": round(float(losses[i]), 4)} for i in wrong]
    return {"val_accuracy": result["accuracy"], "val_loss": result["loss"], "per_class_accuracy": per_class,
            "confusion": confusion.tolist(), "classes": classes, "misclassified": mistakes}


def finetune_images(paths: list[str | Path], config: ImageFinetuneConfig, workdir: str | Path, out: str | Path,
                    on_progress: ProgressFn | None = None, should_stop: Callable[[], bool] = lambda: False,
                    device: torch.device | str = "cpu", command: str = "") -> dict:
    """The whole path from an upload to a model folder at `out`; returns metrics and the validation report."""
    config.validate()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    report = on_progress or (lambda event: None)
    report({"kind": "stage", "stage": "reading the upload"})
    if is_hub_backbone(config.backbone):  # a hub network wants its own input size, however small the images
        hub_size = hub_preprocessing(load_hub_classifier(config.backbone))["size"]
        data = load_upload(paths, workdir, config.image_size or hub_size)
    else:
        data = load_upload(paths, workdir, config.image_size, largest=28 if config.backbone in GREY_BACKBONES else 32)
    size = data.images.shape[-1]
    read_seconds = time.perf_counter() - started
    train_idx, val_idx = stratified_split(data.targets.numpy(), config.val_fraction, config.seed)
    backbone, backbone_scores = config.backbone, {}
    if backbone == "auto":
        report({"kind": "stage", "stage": "choosing the backbone"})
        backbone, backbone_scores = choose_backbone(data.images[train_idx], data.targets[train_idx], len(data.classes), config.seed)
    model, architecture, arch_config, preprocessing = start_network(backbone, len(data.classes), data.images)
    shift = 0 if is_hub_backbone(backbone) else config.tta_shift  # 5 passes of a big network: too slow
    preprocessing.update(kind="rgb", size=size, channels=3, tta_flip=config.flip, tta_shift=shift)
    device = torch.device(device)
    model = model.to(device)
    x = normalise(data.images.to(device), preprocessing["mean"], preprocessing["std"])
    y = data.targets.to(device)
    x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    report({"kind": "stage", "stage": "training", "n_train": len(train_idx), "n_val": len(val_idx), "classes": data.classes,
            "read_seconds": round(read_seconds, 1)})

    if config.strategy == "probe":
        fit = fit_probe(model, x_train, y_train, x_val, y_val, config, on_progress, should_stop)
        epochs = fit["epochs_run"]
    else:
        # The one-cycle schedule follows the clock: whatever this machine's speed, training ends on time with
        # the learning rate annealed (max_epochs is only a ceiling).
        budget = max(1.0, config.time_budget - (time.perf_counter() - started - read_seconds))
        epochs = config.max_epochs
        train_config = VisionTrainConfig(
            epochs=epochs, batch_size=min(config.batch_size, len(x_train)), lr=config.lr, weight_decay=config.weight_decay,
            label_smoothing=config.label_smoothing, ema_decay=0.98, tta_flip=config.flip, seed=config.seed,
            time_budget=budget, schedule_by_time=True,
            augment=Augment(flip=config.flip, max_shift=config.max_shift, max_rotate=config.max_rotate, max_scale=config.max_scale,
                            cutout=config.cutout))
        model, fit = fit_classifier(model, x_train, y_train, x_val, y_val, train_config, on_progress, should_stop)
    # A small upload can run all its epochs before the clock runs out; the page says why it ended early.
    ceiling_reached = (config.strategy == "finetune" and not fit["stopped"] and fit["epochs_run"] >= epochs
                       and fit["seconds"] < budget - 1)
    model.eval()
    result = validation_report(model, x_val, y_val, data.classes, config.flip, shift)
    seconds = round(time.perf_counter() - started, 1)
    metrics = {"val_accuracy": round(result["val_accuracy"], 4), "val_loss": round(result["val_loss"], 4),
               "n_train": len(train_idx), "n_val": len(val_idx), "classes": data.classes, "seconds": seconds,
               "read_seconds": round(read_seconds, 1), "epochs_run": fit["epochs_run"], "max_epochs": epochs,
               "epoch_ceiling_reached": ceiling_reached, "stopped": fit["stopped"],
               "per_class_accuracy": result["per_class_accuracy"], "skipped": len(data.skipped),
               "backbone": backbone, "inverted": backbone in GREY_BACKBONES and light_ground(data.images)}
    if backbone_scores:
        metrics["cv_accuracy_by_backbone"] = {name: round(score, 4) for name, score in backbone_scores.items()}
    card = {
        "name": Path(out).name, "task": "image-classification", "architecture": architecture, "arch_config": arch_config,
        "labels": data.classes, "preprocessing": preprocessing,
        "training_data": f"an upload of {len(data.names):,} images in {len(data.classes)} classes",
        "training_config": asdict(config), "backbone": backbone,
        "metrics": {k: v for k, v in metrics.items() if k not in ("classes",)},
        "command": command, "parameters": count_parameters(model),
        "description": (f"{'A linear probe on' if config.strategy == 'probe' else 'A fine-tune of'} the {backbone} "
                        f"network for {len(data.classes)} classes of your own ({', '.join(data.classes[:6])}"
                        f"{', ...' if len(data.classes) > 6 else ''})."),
    }
    folder = save_model(out, model.cpu(), card)
    mistakes = result["misclassified"]
    for mistake in mistakes:
        index = int(val_idx[mistake.pop("index")])
        mistake["file"] = data.names[index]
        mistake["image"] = data.images[index]  # uint8 (3, S, S): what the network saw
    history = fit["history"]
    return {"folder": str(folder), "metrics": metrics, "confusion": result["confusion"], "classes": data.classes,
            "misclassified": mistakes, "history": history, "skipped": data.skipped}


def thumbnail(image: torch.Tensor, side: int = 96) -> Image.Image:
    """A uint8 (3, S, S) tensor, enlarged without blurring, for a gallery."""
    array = image.permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    return Image.fromarray(array).resize((side, side), Image.Resampling.NEAREST)

