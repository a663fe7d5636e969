"""Small residual CNNs (He et al., 2015) sized by a config.

- `ResNet`: the textbook shape, stages that downsample with a strided first block (the shipped `mnist`).
- `ResNet9`: David Page's DAWNBench "ResNet-9": each stage is a conv, a 2x2 max-pool and optional residual
  blocks. It learns fastest per FLOP on small photos, so the shipped `cifar10` is one.

Both are kept plain and expose the same parts (`first_conv`, `stages`, `gradcam_layer`,
`forward_with_activations`) so the "look inside" panel can show the stem's filters and each stage's maps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ResNetConfig:
    in_channels: int = 3
    num_classes: int = 10
    widths: list[int] = field(default_factory=lambda: [64, 128, 256])
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    dropout: float = 0.0


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut; the first conv downsamples when stride is 2."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, config.widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(config.widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, in_ch = [], config.widths[0]
        for index, (width, count) in enumerate(zip(config.widths, config.blocks)):
            layers = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(in_ch, width, stride))
                in_ch = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(in_ch, config.num_classes)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.stem[0]

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last stage: the finest map that still sees whole objects."""
        return self.stages[-1]

    def forward_with_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        activations = [self.stem(x)]
        for stage in self.stages:
            activations.append(stage(activations[-1]))
        pooled = F.adaptive_avg_pool2d(activations[-1], 1).flatten(1)
        return self.head(self.dropout(pooled)), activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_activations(x)[0]


def conv_bn(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + f(x) with f two conv-bn-relu layers at constant width."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(width, width), conv_bn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@dataclass
class ResNet9Config:
    in_channels: int = 3
    num_classes: int = 10
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # stem, then one per stage
    blocks: list[int] = field(default_factory=lambda: [1, 0, 1])  # residual blocks after each stage's pool
    logit_scale: float = 0.125  # Page's trick: small logits keep the softmax soft early in training


class ResNet9(nn.Module):
    def __init__(self, config: ResNet9Config):
        super().__init__()
        if len(config.widths) != len(config.blocks) + 1:
            raise ValueError("ResNet9 needs one more width (the stem) than stages")
        self.config = config
        self.stem = conv_bn(config.in_channels, config.widths[0])
        self.stages = nn.ModuleList(
            nn.Sequential(conv_bn(in_ch, out_ch), nn.MaxPool2d(2), *[Residual(out_ch) for _ in range(count)])
            for in_ch, out_ch, count in zip(config.widths[:-1], config.widths[1:], config.blocks)
        )
        self.head = nn.Linear(config.widths[-1], config.num_classes, bias=False)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.stem[0]

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.stages[-1]

    def forward_with_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        activations = [self.stem(x)]
        for stage in self.stages:
            activations.append(stage(activations[-1]))
        pooled = F.adaptive_max_pool2d(activations[-1], 1).flatten(1)
        return self.head(pooled) * self.config.logit_scale, activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_activations(x)[0]


def _checked(config_class: type, arch_config: dict):
    unknown = set(arch_config) - set(config_class.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    return config_class(**arch_config)


def build_resnet(arch_config: dict) -> ResNet:
    return ResNet(_checked(ResNetConfig, arch_config))


def build_resnet9(arch_config: dict) -> ResNet9:
    return ResNet9(_checked(ResNet9Config, arch_config))


def resnet_config_dict(config: ResNetConfig | ResNet9Config) -> dict:
    return asdict(config)
