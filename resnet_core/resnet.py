"""The network builder: CIFAR stem (2015 §4.2) and ImageNet stem (2015 Table 1), any block,
any shortcut option; ``residual=False`` is the plain counterpart with the same layers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import BLOCKS, ResponseTap
from .errors import ConfigError, choice_error
from .registry import IMAGENET_STAGES

__all__ = ["ARCHS", "ModelConfig", "ResNet", "build_model"]

ARCHS = ("cifar", "imagenet")
SHORTCUTS = ("A", "B", "C")
BOTTLENECK_STRIDES = ("1x1", "3x3")
# Stage widths before the width multiplier.
STAGE_WIDTHS = {"cifar": (16, 32, 64), "imagenet": (64, 128, 256, 512)}
DEFAULT_INPUT_SIZE = {"cifar": 32, "imagenet": 224}
DEFAULT_DEPTH = {"cifar": 20, "imagenet": 18}


def layers_per_block(block: str) -> int:
    return 3 if block.endswith("bottleneck") else 2


@dataclass(frozen=True)
class ModelConfig:
    """One model, in the names users write (YAML ``model.*``, CLI flags). ``None`` fields are
    resolved from the others: block and shortcut from the arch (CIFAR: basic/A; ImageNet: basic
    below depth 50, else bottleneck / B), depth from ``stages`` when that is given."""

    # Pydantic reads this when the orchestrator validates YAML into this dataclass.
    __pydantic_config__ = {"extra": "forbid"}

    arch: str = "cifar"
    depth: int | None = None
    block: str | None = None
    shortcut: str | None = None
    residual: bool = True
    width: int = 1
    stages: tuple[int, ...] | None = None
    bottleneck_stride: str = "1x1"
    num_classes: int | None = None
    zero_init_last: bool = False
    drop_path: float = 0.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.arch not in ARCHS:
            raise choice_error("model.arch", self.arch, ARCHS)
        if self.stages is not None:
            set_("stages", tuple(self.stages))
        if self.block is None:
            deep = self.arch == "imagenet" and (self.depth or 0) >= 50
            set_("block", "bottleneck" if deep else "basic")
        if self.block not in BLOCKS:
            raise choice_error("model.block", self.block, BLOCKS)
        if self.shortcut is None:
            set_("shortcut", "A" if self.arch == "cifar" else "B")
        if self.shortcut not in SHORTCUTS:
            raise choice_error("model.shortcut", self.shortcut, SHORTCUTS)
        if self.bottleneck_stride not in BOTTLENECK_STRIDES:
            raise choice_error("model.bottleneck_stride", self.bottleneck_stride, BOTTLENECK_STRIDES)
        if self.width < 1:
            raise ConfigError("model.width", f"{self.width} must be a positive integer")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError("model.num_classes", f"{self.num_classes} must be at least 2")
        for name in ("drop_path", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name}", f"{getattr(self, name)} must be in [0, 1)")
        if self.drop_path and not self.residual:
            raise ConfigError("model.drop_path", "stochastic depth needs shortcuts (residual: true)")
        if self.zero_init_last and not self.residual:
            # Zeroing each block's last BN (Goyal et al. 2017) makes a residual block start as its
            # shortcut; without shortcuts every block outputs zeros: constant logits, no gradient.
            raise ConfigError("model.zero_init_last", "needs shortcuts (residual: true): a plain net with each "
                              "block's last BN at zero outputs constants and never trains")
        set_("depth", self._resolve_depth())

    def _resolve_depth(self) -> int:
        per_block = layers_per_block(self.block)
        n_stages = len(STAGE_WIDTHS[self.arch])
        if self.stages is not None:
            if len(self.stages) != n_stages or min(self.stages) < 1:
                raise ConfigError(
                    "model.stages",
                    f"{list(self.stages)} must list {n_stages} positive block counts for arch {self.arch}",
                )
            depth = per_block * sum(self.stages) + 2
            if self.depth is not None and self.depth != depth:
                raise ConfigError(
                    "model.depth", f"{self.depth} disagrees with stages {list(self.stages)} (depth {depth})"
                )
            return depth
        depth = self.depth if self.depth is not None else DEFAULT_DEPTH[self.arch]
        if self.arch == "cifar":
            step = per_block * 3  # depth = 6n+2 (basic) or 9n+2 (bottleneck), 2015 §4.2 / 2016 §4
            if depth < step + 2 or (depth - 2) % step:
                valid = ", ".join(str(step * n + 2) for n in (1, 2, 3, 5, 7, 9, 18))
                raise ConfigError(
                    "model.depth",
                    f"{depth} is not {step}n+2 for {self.block} blocks on CIFAR; valid: {valid}, …",
                )
        else:
            valid = [d for d in IMAGENET_STAGES if (d >= 50) == (per_block == 3)]
            if depth not in valid:
                raise ConfigError(
                    "model.depth",
                    f"{depth} is not an ImageNet depth for {self.block} blocks; valid: "
                    f"{', '.join(map(str, valid))} (or give model.stages)",
                )
        return depth

    @property
    def blocks_per_stage(self) -> tuple[int, ...]:
        if self.stages is not None:
            return self.stages
        if self.arch == "imagenet":
            return IMAGENET_STAGES[self.depth]
        n = (self.depth - 2) // (3 * layers_per_block(self.block))
        return (n, n, n)

    @property
    def name(self) -> str:
        """A short readable name, e.g. ``resnet56-basic-A`` or ``plain20-basic``."""
        kind = "resnet" if self.residual else "plain"
        name = f"{kind}{self.depth}-{self.block}"
        if self.residual:
            name += f"-{self.shortcut}"
        if self.width != 1:
            name += f"-w{self.width}"
        return name

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = list(self.stages) if self.stages is not None else None
        return d



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
        raise ConfigError(
            "model.num_classes", f"{cfg.num_classes} disagrees with the dataset's {num_classes} classes"
        )
    classes = num_classes or cfg.num_classes or (10 if cfg.arch == "cifar" else 1000)
    return ResNet(cfg, classes)
