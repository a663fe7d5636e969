"""Train an image classifier from uint8 tensors: the shipped cifar10/mnist models and (later) fine-tunes.

One loop for all: batched augmentation on the device, SGD with Nesterov momentum and a one-cycle schedule,
label smoothing, an exponential moving average of the weights, and validation after each epoch with
optional flip test-time augmentation. Training uses channels-last tensors, and bfloat16 autocast where the
hardware runs it (a CPU with AVX-512 BF16 or AMX, or a CUDA GPU: about twice as fast as float32 there; an AVX2
CPU only emulates it, 13x slower); weights stay float32. A callback receives progress events; `should_stop` is
checked every step so a job can be cancelled or paused from outside.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from engine.checkpoints import count_parameters, save_model
from engine.device import pick_device, training_autocast
from engine.vision import data as datasets
from engine.vision.glyphs import GlyphConfig, glyph_dataset
from engine.vision.tta import tta_logits
from engine.vision.nets import ResNet, ResNet9, ResNet9Config, ResNetConfig, resnet_config_dict

ProgressFn = Callable[[dict], None]


@dataclass
class Augment:
    flip: bool = True  # horizontal flips: right for photos, wrong for digits
    max_shift: float = 0.125  # translation as a fraction of the image side
    max_rotate: float = 0.0  # degrees
    max_scale: float = 0.0  # +/- relative zoom
    cutout: float = 0.0  # side of a zeroed square, as a fraction of the image side


@dataclass
class VisionTrainConfig:
    dataset: str = "cifar10"  # cifar10, mnist, or glyphs (drawn by engine.vision.glyphs)
    glyphs_per_class: int = 200  # glyphs: examples drawn of each of the 1,000 classes
    data_dir: str | None = None
    out: str = "checkpoints/cifar10"
    architecture: str = "resnet9"  # resnet9 (pool-downsampling, for photos) or resnet (strided)
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    blocks: list[int] = field(default_factory=lambda: [1, 0, 1])
    epochs: int = 120
    batch_size: int = 128
    lr: float = 0.2
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    ema_decay: float = 0.99
    val_fraction: float = 0.1
    tta_flip: bool = True
    tta_shift: int = 0  # test-time views shifted by this many pixels (0 = none); used by the final evaluation
    augment: Augment = field(default_factory=Augment)
    seed: int = 0
    time_budget: float | None = None  # seconds; training stops early and keeps what it has
    schedule_by_time: bool = False  # the one-cycle schedule spans time_budget seconds (epochs is then a ceiling)
    device: str | None = None
    bf16: bool = True  # bfloat16 autocast where the hardware runs it fast (engine.device.bfloat16_is_fast)


def random_augment(x: torch.Tensor, aug: Augment, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Random flip, shift, rotation, zoom and cutout for a whole batch at once, with one affine grid.
    Pixels that move in from outside take the value `fill` (the ground: black for digits, white for paper), so that
    augmented batches keep the statistics of real images and batch norm is not misled."""
    n, _, h, w = x.shape
    device = x.device
    angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(aug.max_rotate)
    scale = 1 + (torch.rand(n, device=device) * 2 - 1) * aug.max_scale
    shift = (torch.rand(n, 2, device=device) * 2 - 1) * aug.max_shift * 2  # grid units span 2
    flip = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0) if aug.flip else torch.ones(n, device=device)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="reflection" if aug.flip else "zeros", align_corners=False) + fill
    if aug.cutout > 0:
        size = max(1, int(round(aug.cutout * h)))
        cy = torch.randint(0, h, (n, 1, 1), device=device)
        cx = torch.randint(0, w, (n, 1, 1), device=device)
        ys = torch.arange(h, device=device).view(1, h, 1)
        xs = torch.arange(w, device=device).view(1, 1, w)
        hole = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
        out = out.masked_fill(hole.unsqueeze(1), 0.0)
    return out


def warmup_ema(decay: float):
    """Exponential moving average whose decay ramps up with the step count (as in timm), so the average
    is not dominated by the random initial weights in the first epochs."""

    def update(ema_tensors: list[torch.Tensor], tensors: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        rate = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        for ema_tensor, tensor in zip(ema_tensors, tensors):
            if ema_tensor.is_floating_point():
                ema_tensor.lerp_(tensor, rate)
            else:
                ema_tensor.copy_(tensor)

    return update


def one_cycle(progress: float, max_lr: float, pct_start: float = 0.2) -> tuple[float, float]:
    """(learning rate, momentum) at `progress` in [0, 1], shaped as torch's OneCycleLR: cosine warm-up from
    max_lr/25 to max_lr, cosine decay to max_lr/25e4; momentum moves the other way between 0.95 and 0.85."""
    initial, final = max_lr / 25, max_lr / 25e4
    if progress < pct_start:
        rise = (1 - math.cos(math.pi * progress / pct_start)) / 2
        return initial + (max_lr - initial) * rise, 0.95 - 0.10 * rise
    fall = (1 + math.cos(math.pi * (progress - pct_start) / (1 - pct_start))) / 2
    return final + (max_lr - final) * fall, 0.85 + 0.10 * (1 - fall)


def border_pixels(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 2H + 2W): each image's outermost rows and columns, where the ground shows."""
    return torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)


def ground_colour(x: torch.Tensor) -> torch.Tensor:
    """Per channel, the median of the images' border pixels, shaped (1, C, 1, 1): the ground that pixels moved
    in from outside should take: black for MNIST's digits, white for drawings on paper or shapes on white."""
    return border_pixels(x).transpose(0, 1).reshape(x.shape[1], -1).median(dim=1).values.view(1, -1, 1, 1)


def normalise(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N,C,H,W) -> float, scaled to [0,1] then standardised per channel."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tta_flip: bool, batch_size: int = 500, tta_shift: int = 0) -> dict:
    """Loss and accuracy of float inputs x, with logits averaged over the test-time views (engine.vision.tta)."""
    model.eval()
    total_loss, correct, logits_all = 0.0, 0, []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = tta_logits(model, xb, flip=tta_flip, shift=tta_shift).float()
        total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
        logits_all.append(logits)
    n = max(1, len(x))
    return {"loss": total_loss / n, "accuracy": correct / n, "logits": torch.cat(logits_all) if logits_all else None}


def fit_classifier(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    config: VisionTrainConfig,
    on_progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[nn.Module, dict]:
    """Train `model` on float tensors already on the device; return the EMA model and its metrics."""
    generator = torch.Generator().manual_seed(config.seed)
    # A last batch of a few images would give batch norm (and the gradient) a wild step: one smaller than half a
    # batch is left out (different images each epoch, as the order is shuffled).
    full, remainder = divmod(len(x_train), config.batch_size)
    steps_per_epoch = max(1, full + (1 if remainder >= config.batch_size // 2 else 0))
    total_steps = steps_per_epoch * config.epochs
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, momentum=0.9, nesterov=True,
    )
    by_time = config.schedule_by_time and bool(config.time_budget)
    scheduler = None if by_time else torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps,
                                                                          pct_start=0.2)
    background = ground_colour(x_train)
    autocast = lambda: training_autocast(x_train.device, config.bf16)  # noqa: E731
    model = model.to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=warmup_ema(config.ema_decay), use_buffers=True)
    history: list[dict] = []
    start, step, stopped, finished = time.perf_counter(), 0, None, False

    def eta(elapsed: float) -> float:
        if by_time:
            return max(0.0, config.time_budget - elapsed)
        return elapsed / max(1, step) * (total_steps - step)

    def progress_now() -> float:
        """How far along the schedule is: by steps, or by time when the schedule follows the clock."""
        fraction = step / total_steps
        return min(1.0, max(fraction, (time.perf_counter() - start) / config.time_budget) if by_time else fraction)

    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(x_train.device)
        seen, loss_sum, correct = 0, 0.0, 0
        for batch in range(steps_per_epoch):
            index = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            xb, yb = random_augment(x_train[index], config.augment, background), y_train[index]
            with autocast():
                logits = model(xb.contiguous(memory_format=torch.channels_last)).float()
            loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if by_time:
                lr, momentum = one_cycle(progress_now(), config.lr)
                for group in optimizer.param_groups:
                    group["lr"], group["momentum"] = lr, momentum
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            ema.update_parameters(model)
            step += 1
            seen += len(index)
            loss_sum += loss.item() * len(index)
            correct += (logits.argmax(1) == yb).sum().item()
            elapsed = time.perf_counter() - start
            finished = by_time and progress_now() >= 1.0
            if should_stop is not None and should_stop():
                stopped = "stopped by request"
            elif not by_time and config.time_budget is not None and elapsed > config.time_budget:
                stopped = "time budget reached"
            if stopped or finished:
                break
            if on_progress is not None:
                on_progress({"kind": "step", "step": step, "steps": total_steps, "epoch": epoch,
                             "epochs": config.epochs, "train_loss": loss.item(), "elapsed": elapsed,
                             "eta": eta(elapsed)})
        with autocast():
            val = evaluate(ema.module, x_val, y_val, config.tta_flip) if len(x_val) else {"loss": None, "accuracy": None}
        elapsed = time.perf_counter() - start
        record = {"kind": "epoch", "epoch": epoch, "epochs": config.epochs, "step": step, "steps": total_steps,
                  "train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                  "val_loss": val["loss"], "val_acc": val["accuracy"], "elapsed": elapsed, "eta": eta(elapsed)}
        history.append(record)
        if on_progress is not None:
            on_progress(record)
        if stopped or finished:
            break
    # Augmentation shifts activation statistics a little; re-estimate batch norm on clean training images
    # (as SWA does) so the model is tuned to what it will see, then measure it once more.
    final = ema.module
    update_bn([x_train[i : i + 500] for i in range(0, len(x_train), 500)], final)
    val = evaluate(final, x_val, y_val, config.tta_flip, tta_shift=config.tta_shift) if len(x_val) else {"loss": None, "accuracy": None}
    metrics = {"val_accuracy": val["accuracy"], "val_loss": val["loss"],
               "epochs_run": len(history), "steps": step, "seconds": round(time.perf_counter() - start, 1),
               "stopped": stopped, "history": history}
    return final.eval(), metrics


def default_config(dataset: str) -> VisionTrainConfig:
    """Defaults that reach the targets: photos get flips and cutout; digits get small rotations and zooms."""
    if dataset == "glyphs":
        # An endless supply of drawings needs no cutout or rotation of its own: every example is drawn afresh.
        return VisionTrainConfig(
            dataset="glyphs", out="checkpoints/glyphs", epochs=9, batch_size=256, lr=0.2, label_smoothing=0.1,
            tta_flip=False, val_fraction=0.05, augment=Augment(flip=False, max_shift=0.1),
        )
    if dataset == "mnist":
        return VisionTrainConfig(
            dataset="mnist", out="checkpoints/mnist", widths=[32, 64, 128, 256], blocks=[1, 0, 1], epochs=40,
            lr=0.05, label_smoothing=0.05, tta_flip=False, val_fraction=0.15,
            augment=Augment(flip=False, max_shift=0.1, max_rotate=12.0, max_scale=0.1),
        )
    # 5,085 photos overfit within 30 epochs; a 16x16 cutout (DeVries & Taylor's CIFAR-10 setting) keeps
    # 120 epochs useful. Test-time views: the image, its mirror, and both shifted 2 pixels four ways.
    return VisionTrainConfig(augment=Augment(cutout=0.5), tta_shift=2)


DESCRIPTIONS = {
    "cifar10": "A small residual CNN (ResNet-9 style) for the 10 CIFAR-10 classes (32x32 photos).",
    "mnist": "A small residual CNN for handwritten digits, 28x28 as in MNIST; drawings are centred and scaled first.",
    "glyphs": ("A backbone for drawings: a small residual CNN that tells 1,000 procedurally drawn pen-stroke glyphs apart. "
               "It has seen no real image; the Fine-tune tab starts from it for digits, letters and symbols."),
}


def train_shipped_model(config: VisionTrainConfig, on_progress: ProgressFn | None = None,
                        should_stop: Callable[[], bool] | None = None, command: str = "") -> tuple[Path, dict]:
    """Train the cifar10 or mnist model from ../shared/data and write its model folder with a card."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device) if config.device else pick_device()
    if config.dataset == "cifar10":
        images, labels, classes = datasets.load_cifar10(config.data_dir)
        source = "CIFAR-10 subset from ../shared/data/cifar10-subset (5,085 training images, about 500 per class)"
    elif config.dataset == "mnist":
        # All 8,678 given digits (3,678 "train" + 5,000 "test"), pooled: the hidden test digits are elsewhere,
        # and more writers matter more than anything else for generalising to new handwriting.
        train_images, train_labels, classes = datasets.load_mnist(config.data_dir, "train")
        test_images, test_labels, _ = datasets.load_mnist(config.data_dir, "test")
        images, labels = torch.cat([train_images, test_images]), torch.cat([train_labels, test_labels])
        source = "MNIST subset from ../shared/data/mnist (3,678 training + 5,000 test digits, pooled and re-split)"
    elif config.dataset == "glyphs":
        glyphs = GlyphConfig(seed=config.seed)
        images, labels = glyph_dataset(glyphs, config.glyphs_per_class, seed=config.seed + 1)
        classes = [f"glyph {i}" for i in range(glyphs.n_classes)]
        source = (f"{glyphs.n_classes:,} procedurally drawn glyph classes, {config.glyphs_per_class} examples each "
                  f"(engine/vision/glyphs.py, seed {config.seed}); no real images")
    else:
        raise ValueError(f"unknown dataset {config.dataset}")
    train_idx, val_idx = datasets.stratified_split(labels.numpy(), config.val_fraction, config.seed)
    pixels = images[train_idx].float() / 255.0
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).tolist()
    x = normalise(images.to(device), mean, std)
    y = labels.to(device)
    if config.architecture == "resnet9":
        arch = ResNet9Config(in_channels=images.shape[1], num_classes=len(classes), widths=config.widths, blocks=config.blocks)
        model = ResNet9(arch).to(device)
    else:
        arch = ResNetConfig(in_channels=images.shape[1], num_classes=len(classes), widths=config.widths, blocks=config.blocks)
        model = ResNet(arch).to(device)
    model, metrics = fit_classifier(model, x[train_idx], y[train_idx], x[val_idx], y[val_idx], config, on_progress, should_stop)
    card_metrics = {"val_accuracy": metrics["val_accuracy"], "val_loss": metrics["val_loss"],
                    "n_train": len(train_idx), "n_val": len(val_idx), "train_seconds": metrics["seconds"],
                    "epochs_run": metrics["epochs_run"], "device": str(device)}
    preprocessing = {"kind": "digit" if config.dataset in ("mnist", "glyphs") else "rgb", "size": images.shape[-1],
                     "channels": images.shape[1], "mean": mean, "std": std, "tta_flip": config.tta_flip,
                     "tta_shift": config.tta_shift}
    card = {
        "name": config.dataset,
        "task": "image-backbone" if config.dataset == "glyphs" else "image-classification",  # a backbone is only fine-tuned from
        "architecture": config.architecture,
        "arch_config": resnet_config_dict(arch),
        "labels": classes,
        "preprocessing": preprocessing,
        "training_data": source,
        "training_config": {k: v for k, v in asdict(config).items() if k not in ("data_dir", "out", "device")},
        "metrics": card_metrics,
        "command": command,
        "parameters": count_parameters(model),
        "description": DESCRIPTIONS[config.dataset],
    }
    folder = save_model(config.out, model, card)
    return folder, {**card_metrics, "history": metrics["history"], "stopped": metrics["stopped"]}
