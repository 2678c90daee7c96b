"""The settings of a run, as users write them (YAML sections and CLI flags): the model, the data
and the recipe, and the names they may take. Torch-free, so the command line starts fast
(`--help`, `plan`) and imports torch only to build or train."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, choice_error
from .registry import IMAGENET_STAGES

__all__ = [
    "ARCHS", "BLOCK_NAMES", "BOTTLENECK_STRIDES", "DATASETS", "DEFAULT_INPUT_SIZE", "DEFAULT_VAL_SIZE", "NORMALIZATIONS",
    "PAPER_ITERATIONS", "COMPILE_MODES", "PRECISIONS", "SCHEDULES", "SHORTCUTS", "DataConfig", "ModelConfig", "RunConfig",
    "TrainConfig", "default_cache_dir", "layers_per_block", "num_classes", "planned_epochs", "split_sizes",
    "steps_per_epoch",
]

# The blocks of resnet_core.blocks.BLOCKS, by name (a test keeps the two equal).
BLOCK_NAMES = ("basic", "bottleneck", "preact-basic", "preact-bottleneck")
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
        if self.block not in BLOCK_NAMES:
            raise choice_error("model.block", self.block, BLOCK_NAMES)
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




DATASETS = ("cifar10", "cifar100", "digits", "synthetic")
NORMALIZATIONS = ("pixel-mean", "channel")
# Default val sizes: CIFAR's 45k/5k split of the training set (2015 §4.2); digits keeps 10% for
# val and 20% for test of its 1,797 images.
DEFAULT_VAL_SIZE = {"cifar10": 5000, "cifar100": 5000, "digits": 180, "synthetic": 256}


def default_cache_dir() -> Path:
    return Path(os.environ.get("RESNET_SWEEP_DATA", Path.home() / ".cache" / "resnet-sweep" / "data"))


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split and prepared (YAML ``dataset.*``)."""

    __pydantic_config__ = {"extra": "forbid"}

    name: str = "cifar10"
    val_size: int | None = None
    split_seed: int = 0
    cache_dir: str | None = None
    normalize: str = "pixel-mean"
    # Pad-crop-flip (2015 §4.2). Default: on for CIFAR, off for digits (a flipped 2 is not a 2)
    # and synthetic.
    augment: bool | None = None
    image_size: int = 32
    # Use only the first N training images (smoke tests, quick looks); None = all.
    train_limit: int | None = None
    # synthetic only: how many images and classes to generate.
    synthetic_size: int = 1024
    synthetic_classes: int = 10

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise choice_error("dataset.name", self.name, DATASETS)
        if self.augment is None:
            object.__setattr__(self, "augment", self.name.startswith("cifar"))
        if self.name.startswith("cifar") and self.image_size != 32:
            raise ConfigError("dataset.image_size", f"{self.image_size}: CIFAR images are 32 px")
        if self.normalize not in NORMALIZATIONS:
            raise choice_error("dataset.normalize", self.normalize, NORMALIZATIONS)
        if self.val_size is not None and self.val_size < 1:
            raise ConfigError("dataset.val_size", f"{self.val_size} must be at least 1 (best epoch is chosen on val)")
        if self.image_size < 8:
            raise ConfigError("dataset.image_size", f"{self.image_size} must be at least 8 pixels")
        if self.train_limit is not None and self.train_limit < 1:
            raise ConfigError("dataset.train_limit", f"{self.train_limit} must be positive")
        if self.synthetic_size < 16:
            raise ConfigError("dataset.synthetic_size", f"{self.synthetic_size} must be at least 16")
        if self.synthetic_classes < 2:
            raise ConfigError("dataset.synthetic_classes", f"{self.synthetic_classes} must be at least 2")
        if split_sizes(self)[0] < 1:
            raise ConfigError("dataset.val_size", f"{self.val_size or DEFAULT_VAL_SIZE[self.name]} leaves no training images")


def num_classes(cfg: DataConfig) -> int:
    """Classes of ``cfg``'s dataset, without loading it."""
    return {"cifar100": 100, "synthetic": cfg.synthetic_classes}.get(cfg.name, 10)


def split_sizes(cfg: DataConfig) -> tuple[int, int, int]:
    """(train, val, test) image counts of ``cfg`` without loading anything (for planning)."""
    total, test = {
        "cifar10": (50000, 10000),
        "cifar100": (50000, 10000),
        "digits": (1797 - 1797 // 5, 1797 // 5),
        "synthetic": (cfg.synthetic_size, max(cfg.synthetic_size // 4, 16)),
    }[cfg.name]
    val = cfg.val_size if cfg.val_size is not None else DEFAULT_VAL_SIZE[cfg.name]
    train = total - val
    if cfg.train_limit is not None:
        train = min(train, cfg.train_limit)
    return train, val, test



PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# torch.compile's modes; "reduce-overhead" captures CUDA graphs (one launch per step on a GPU).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SCHEDULES = ("multistep", "cosine", "constant")
PAPER_ITERATIONS = 64_000  # 2015 §4.2: stop at 64k iterations (≈182 epochs on 45k images)


@dataclass(frozen=True)
class TrainConfig:
    """The recipe (YAML ``train.*``). Defaults are the paper's CIFAR recipe (2015 §4.2): SGD,
    momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 50% and 75% of the run
    (32k and 48k of 64k iterations)."""

    __pydantic_config__ = {"extra": "forbid"}

    epochs: int | None = None  # give epochs or iterations; neither = the paper's 64k iterations
    iterations: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    bn_weight_decay: bool = True  # the paper decays every weight, BN's included
    schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the run where lr drops
    gamma: float = 0.1
    warmup_iterations: int = 0  # ResNet-110 (2015 §4.2): 400 iterations at 0.01, then back to lr
    warmup_lr: float = 0.01
    label_smoothing: float = 0.0
    # A step loss above this multiple of chance level (ln K) means the weights blew up: the run
    # is declared diverged. BN keeps such nets finite, so non-finite alone misses e.g. lr 10.
    divergence_factor: float = 50.0
    # Speed levers: how fast, never what is computed (no hyperparameter changes). "auto" is the
    # fastest measured setting of the device (docs/benchmarks.md): bf16 autocast and channels_last
    # on CUDA; fp32 and the default layout elsewhere, so CPU runs stay exact.
    precision: str = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool | str = False  # torch.compile: true (default mode) or one of COMPILE_MODES
    fused_sgd: bool = True  # one fused kernel per optimizer step where torch has it (CPU, CUDA)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(self.milestones))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"train.{f.name}", f"{value} is not a finite number")
        if self.epochs is not None and self.iterations is not None:
            raise ConfigError("train.epochs", "give train.epochs or train.iterations, not both")
        for name in ("epochs", "iterations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"train.{name}", f"{value} must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("train.batch_size", f"{self.batch_size} must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError("train.lr", f"{self.lr} must be a positive number")
        if not 0 <= self.momentum < 1:
            raise ConfigError("train.momentum", f"{self.momentum} must be in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError("train.weight_decay", f"{self.weight_decay} must be non-negative")
        if self.schedule not in SCHEDULES:
            raise choice_error("train.schedule", self.schedule, SCHEDULES)
        if list(self.milestones) != sorted(self.milestones) or any(not 0 < m < 1 for m in self.milestones):
            raise ConfigError("train.milestones", f"{list(self.milestones)} must be increasing fractions in (0, 1)")
        if not 0 < self.gamma < 1:
            raise ConfigError("train.gamma", f"{self.gamma} must be in (0, 1)")
        if self.warmup_iterations < 0:
            raise ConfigError("train.warmup_iterations", f"{self.warmup_iterations} must be non-negative")
        if self.warmup_lr <= 0:
            raise ConfigError("train.warmup_lr", f"{self.warmup_lr} must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("train.label_smoothing", f"{self.label_smoothing} must be in [0, 1)")
        if self.divergence_factor < 0:
            raise ConfigError("train.divergence_factor", f"{self.divergence_factor} must be non-negative (0 disables)")
        if self.precision not in PRECISIONS:
            raise choice_error("train.precision", self.precision, PRECISIONS)
        if self.channels_last not in (True, False, "auto"):
            raise choice_error("train.channels_last", self.channels_last, ("auto", "true", "false"))
        if self.compile not in (True, False, *COMPILE_MODES):
            raise choice_error("train.compile", self.compile, ("true", "false", *COMPILE_MODES))
        if self.device != "auto":
            try:
                import torch  # only to parse a device name (cuda:1): the CLI starts without torch

                kind = torch.device(self.device).type
            except RuntimeError:
                kind = None
            if kind not in ("cpu", "cuda", "mps"):
                raise ConfigError("train.device", f"{self.device!r} is not a device (auto, cpu, cuda, cuda:1, mps)")


@dataclass(frozen=True)
class RunConfig:
    """One trial: model + dataset + recipe. Its flat form (``model.depth``, ``train.lr``, …) is
    what sweeps vary and what MLflow logs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = {"model": ModelConfig, "dataset": DataConfig, "train": TrainConfig}

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> "RunConfig":
        parts: dict[str, dict] = {name: {} for name in cls.SECTIONS}
        for key, value in flat.items():
            section, _, name = key.partition(".")
            if section not in parts or name not in {f.name for f in fields(cls.SECTIONS[section])}:
                raise ConfigError(key, "unknown setting")
            parts[section][name] = value
        return cls(**{name: kind(**parts[name]) for name, kind in cls.SECTIONS.items()})

    def to_flat(self) -> dict[str, Any]:
        flat = {}
        for name in self.SECTIONS:
            section = getattr(self, name)
            for f in fields(section):
                value = getattr(section, f.name)
                flat[f"{name}.{f.name}"] = list(value) if isinstance(value, tuple) else value
        return flat


def planned_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Epochs of a run: ``epochs``, or ``iterations`` (default: the paper's 64k) in whole epochs."""
    if cfg.epochs is not None:
        return cfg.epochs
    return max(1, round((cfg.iterations or PAPER_ITERATIONS) / steps_per_epoch))


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    return -(-train_images // batch_size)
