"""The network builder: CIFAR stem (2015 §4.2) and ImageNet stem (2015 Table 1), any block,
any shortcut option; ``residual=False`` is the plain counterpart with the same layers."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import BLOCKS, ResponseTap
from .config import (
    ARCHS,
    BOTTLENECK_STRIDES,
    DEFAULT_DEPTH,
    DEFAULT_INPUT_SIZE,
    SHORTCUTS,
    STAGE_WIDTHS,
    ModelConfig,
    layers_per_block,
)
from .errors import ConfigError

__all__ = [
    "ARCHS",
    "BOTTLENECK_STRIDES",
    "DEFAULT_DEPTH",
    "DEFAULT_INPUT_SIZE",
    "SHORTCUTS",
    "STAGE_WIDTHS",
    "ModelConfig",
    "ResNet",
    "build_model",
    "layers_per_block",
]


class ResNet(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        block_cls = BLOCKS[cfg.block]
        widths = [w * cfg.width for w in STAGE_WIDTHS[cfg.arch]]
        stem_width = widths[0]
        if cfg.arch == "cifar":
            # 3×3 conv, 16 filters (2015 §4.2); pre-activation nets leave BN-ReLU to the first block.
            stem = [nn.Conv2d(3, stem_width, 3, padding=1, bias=False)]
            if not block_cls.preact:
                stem += [nn.BatchNorm2d(stem_width), ResponseTap(), nn.ReLU(inplace=True)]
        else:
            stem = [
                nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            ]
        self.stem = nn.Sequential(*stem)

        counts = cfg.blocks_per_stage
        total = sum(counts)
        stages, in_ch, index = [], stem_width, 0
        for stage, (planes, count) in enumerate(zip(widths, counts)):
            blocks = []
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                # Linearly growing drop rate over depth (Huang et al. 2016, §3).
                rate = cfg.drop_path * (index + 1) / total
                block = block_cls(
                    in_ch,
                    planes,
                    stride,
                    shortcut=cfg.shortcut,
                    residual=cfg.residual,
                    drop_path=rate,
                    bottleneck_stride=cfg.bottleneck_stride,
                )
                blocks.append(block)
                in_ch, index = block.out_channels, index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)

        head = [nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)] if block_cls.preact else []
        # 2016 §3: the extra BN-ReLU before pooling for pre-activation nets.
        self.head = nn.Sequential(*head, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout))
        self.fc = nn.Linear(in_ch, num_classes)
        self._init_weights(zero_init_last=cfg.zero_init_last)

    def _init_weights(self, *, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015b init, fan_out as in the papers' code.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.stages(self.stem(x))))


def build_model(cfg: ModelConfig, *, num_classes: int | None = None) -> ResNet:
    """Build ``cfg``; ``num_classes`` comes from the dataset and must agree with
    ``cfg.num_classes`` when both are set."""
    if cfg.num_classes is not None and num_classes is not None and cfg.num_classes != num_classes:
        raise ConfigError("model.num_classes", f"{cfg.num_classes} disagrees with the dataset's {num_classes} classes")
    classes = num_classes or cfg.num_classes or (10 if cfg.arch == "cifar" else 1000)
    return ResNet(cfg, classes)
