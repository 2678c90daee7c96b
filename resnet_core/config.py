"""The settings of a run, as users write them (YAML sections and CLI flags): the model, the data
and the recipe, and the names they may take. Torch-free, so the command line starts fast
(`--help`, `plan`) and imports torch only to build or train."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from .errors import ConfigError, choice_error
from .folders import ILSVRC2012, FolderCounts, folder_counts
from .registry import IMAGENET_STAGES

__all__ = [
    "ARCHS",
    "BLOCK_NAMES",
    "BN_SMALLEST_BATCH",
    "BOTTLENECK_STRIDES",
    "COMPILE_MODES",
    "DATASETS",
    "DEFAULT_INPUT_SIZE",
    "DEFAULT_VAL_SIZE",
    "FOLDER_DATASETS",
    "NORMALIZATIONS",
    "PAPER_ITERATIONS",
    "PRECISIONS",
    "SCHEDULES",
    "SHORTCUTS",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "batch_sizes",
    "check_hold_out",
    "default_cache_dir",
    "layers_per_block",
    "num_classes",
    "planned_epochs",
    "split_sizes",
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


def setting(default: Any, doc: str, values: tuple | str | None = None) -> Any:
    """A field of the settings below with what docs/sweep-file.md says of it: ``doc``, its
    meaning in a line, and ``values``, the choices (the tuple ``__post_init__`` checks) or the
    bounds (as text) the validation allows. Both live in the field's ``metadata``."""
    return field(default=default, metadata={"doc": doc, "values": values})


@dataclass(frozen=True)
class ModelConfig:
    """One model, in the names users write (YAML ``model.*``, CLI flags). ``None`` fields are
    resolved from the others: block and shortcut from the arch (CIFAR: basic/A; ImageNet: basic
    below depth 50, else bottleneck / B), depth from ``stages`` when that is given."""

    # Pydantic reads this when the orchestrator validates YAML into this dataclass.
    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}

    arch: str = setting("cifar", "network family: CIFAR (3×3 stem, 3 stages) or ImageNet (7×7 stem, 4 stages)", ARCHS)
    depth: int | None = setting(
        None,
        f"weighted layers (null: from stages, else {DEFAULT_DEPTH['cifar']} on CIFAR, "
        f"{DEFAULT_DEPTH['imagenet']} on ImageNet)",
        f"CIFAR: 6n+2 (basic), 9n+2 (bottleneck); ImageNet: {', '.join(map(str, IMAGENET_STAGES))}",
    )
    block: str | None = setting(None, "residual block (null: basic; bottleneck on ImageNet from depth 50)", BLOCK_NAMES)
    shortcut: str | None = setting(
        None,
        "A: zero-padded identity, B: projection where the shape changes, C: projection everywhere "
        "(null: A on CIFAR, B on ImageNet)",
        SHORTCUTS,
    )
    residual: bool = setting(True, "shortcuts on; false: the plain net of the same layers")
    width: int = setting(1, "width multiplier K (16K/32K/64K filters on CIFAR)", "≥ 1")
    stages: tuple[int, ...] | None = setting(
        None, "blocks per stage, e.g. [3, 4, 6, 3] (sets the depth)", "one count ≥ 1 per stage"
    )
    bottleneck_stride: str = setting(
        "1x1",
        "where a bottleneck block strides: its first 1×1 (the paper) or its 3×3 (torchvision)",
        BOTTLENECK_STRIDES,
    )
    num_classes: int | None = setting(None, "classifier outputs (null: the dataset's classes)", "≥ 2")
    zero_init_last: bool = setting(False, "each block's last BN starts at zero (Goyal et al. 2017); needs residual")
    drop_path: float = setting(0.0, "stochastic depth: the drop rate of the deepest block; needs residual", "[0, 1)")
    dropout: float = setting(0.0, "dropout before the classifier", "[0, 1)")

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
            raise ConfigError(
                "model.zero_init_last",
                "needs shortcuts (residual: true): a plain net with each "
                "block's last BN at zero outputs constants and never trains",
            )
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


DATASETS = ("cifar10", "cifar100", "digits", "synthetic", "imagenet", "imagefolder")
# Streamed from an ImageFolder on disk (resnet_core.stream), not held in memory.
FOLDER_DATASETS = ("imagenet", "imagefolder")
NORMALIZATIONS = ("pixel-mean", "channel")
# Default val sizes: CIFAR's 45k/5k split of the training set (2015 §4.2); digits keeps 10% for
# val and 20% for test of its 1,797 images. Folders hold out DEFAULT_VAL_PER_CLASS per class.
DEFAULT_VAL_SIZE = {"cifar10": 5000, "cifar100": 5000, "digits": 180, "synthetic": 256}
DEFAULT_VAL_PER_CLASS = 10
# 2015 §3.4: a 224 crop of the image with its shorter side at random in [256, 480]; other crop
# sizes keep the ratios (8/7 and 15/7 of the crop).
DEFAULT_CROP = 224
SCALE_RATIOS = (256 / 224, 480 / 224)
DEFAULT_LIGHTING = 0.1  # std of the PCA colour noise (Krizhevsky et al. 2012 §4.1; fb.resnet.torch)


def default_cache_dir() -> Path:
    return Path(os.environ.get("RESNET_SWEEP_DATA", Path.home() / ".cache" / "resnet-sweep" / "data"))


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split and prepared (YAML ``dataset.*``).

    imagenet / imagefolder stream torchvision's ImageFolder layout from ``root`` (train/ and
    val/ of class folders; val/ is reported as the test set): the paper's recipe (2015 §3.4) is
    the default, scale augmentation (shorter side at random in ``scale_range``), a random
    ``image_size`` crop, flip and PCA lighting; evaluation on the centre crop of the image with
    its shorter side at ``scale_range[0]``."""

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}

    name: str = setting("cifar10", "the data set (imagenet, imagefolder: class folders on disk at root)", DATASETS)
    val_size: int | None = setting(
        None,
        "training images held out as val, where the best epoch is chosen (null: "
        + ", ".join(f"{name} {size}" for name, size in DEFAULT_VAL_SIZE.items())
        + ")",
        "≥ 1",
    )
    split_seed: int = setting(0, "seed of the train/val split (and of synthetic's images and the eval sample)")
    cache_dir: str | None = setting(
        None, "where CIFAR is, or is downloaded to (null: $RESNET_SWEEP_DATA, else ~/.cache/resnet-sweep/data)"
    )
    normalize: str = setting(
        "pixel-mean", "subtract the per-pixel mean (the paper) or per-channel mean/std", NORMALIZATIONS
    )
    # 2015 §4.2 on CIFAR, §3.4 on folders; off for digits: a flipped 2 is not a 2.
    augment: bool | None = setting(
        None,
        "pad-crop-flip (CIFAR), scale-crop-flip-lighting (folders) (null: on for CIFAR and folders, "
        "off for digits and synthetic)",
    )
    image_size: int | None = setting(
        None,
        f"digits/synthetic: the image side (null: 32; CIFAR is 32); folders: the crop (null: {DEFAULT_CROP})",
        "≥ 8",
    )
    train_limit: int | None = setting(None, "use only the first N training images (smoke tests; null: all)", "≥ 1")
    # Smoke tests: ImageNet's test set is 50,000 images, its 10 crops 500,000.
    eval_limit: int | None = setting(None, "evaluate on a seeded sample of N val and N test images (null: all)", "≥ 1")
    synthetic_size: int = setting(1024, "synthetic: training images generated", "≥ 16")
    synthetic_classes: int = setting(10, "synthetic: classes generated", "≥ 2")
    root: str | None = setting(
        None, "imagenet/imagefolder: the folder of train/ and val/ class folders (relative: to the working directory)"
    )
    val_per_class: int | None = setting(
        None, f"imagenet/imagefolder: training images per class held out as val (null: {DEFAULT_VAL_PER_CLASS})", "≥ 1"
    )
    scale_range: tuple[int, int] | None = setting(
        None,
        "imagenet/imagefolder: the shorter side at random in [low, high] in training (null: "
        f"{[round(DEFAULT_CROP * r) for r in SCALE_RATIOS]} at a {DEFAULT_CROP} crop, in proportion at others)",
        "image_size ≤ low ≤ high",
    )
    lighting: float | None = setting(
        None, f"imagenet/imagefolder: std of the PCA colour noise (null: {DEFAULT_LIGHTING}; 0: none)", "[0, 10)"
    )
    workers: int | None = setting(
        None, "imagenet/imagefolder: decoding processes (null: one per CPU the run has; 0: the training process)", "≥ 0"
    )

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.name not in DATASETS:
            raise choice_error("dataset.name", self.name, DATASETS)
        folder = self.from_folder
        if self.augment is None:
            set_("augment", folder or self.name.startswith("cifar"))
        if self.image_size is None:
            set_("image_size", DEFAULT_CROP if folder else 32)
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
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError("dataset.eval_limit", f"{self.eval_limit} must be positive")
        if self.synthetic_size < 16:
            raise ConfigError("dataset.synthetic_size", f"{self.synthetic_size} must be at least 16")
        if self.synthetic_classes < 2:
            raise ConfigError("dataset.synthetic_classes", f"{self.synthetic_classes} must be at least 2")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(
                "dataset.workers", f"{self.workers} must be non-negative (0: decode in the training process)"
            )
        if folder:
            self._resolve_folder()
        elif split_sizes(self)[0] < 1:
            raise ConfigError(
                "dataset.val_size", f"{self.val_size or DEFAULT_VAL_SIZE[self.name]} leaves no training images"
            )

    def _resolve_folder(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if not self.root:
            raise ConfigError("dataset.root", f"required for {self.name}: the folder holding train/ and val/")
        # Absolute, so trials (in other working directories, on other nodes) read the same folder.
        set_("root", os.path.abspath(os.path.expanduser(self.root)))
        if self.val_size is not None:
            raise ConfigError(
                "dataset.val_size", f"{self.name} holds out dataset.val_per_class images of each class instead"
            )
        if self.val_per_class is None:
            set_("val_per_class", DEFAULT_VAL_PER_CLASS)
        if self.val_per_class < 1:
            raise ConfigError(
                "dataset.val_per_class", f"{self.val_per_class} must be at least 1 (best epoch is chosen on val)"
            )
        if self.scale_range is None:
            set_("scale_range", tuple(round(self.image_size * r) for r in SCALE_RATIOS))
        set_("scale_range", tuple(self.scale_range))
        if len(self.scale_range) != 2 or not self.image_size <= self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(
                "dataset.scale_range",
                f"{list(self.scale_range)} must be [low, high] shorter sides with "
                f"dataset.image_size {self.image_size} ≤ low ≤ high",
            )
        if self.lighting is None:
            set_("lighting", DEFAULT_LIGHTING)
        if not 0 <= self.lighting < 10:
            raise ConfigError("dataset.lighting", f"{self.lighting} must be in [0, 10) (the paper's recipe: 0.1)")

    @property
    def from_folder(self) -> bool:
        """Streamed from an ImageFolder on disk rather than held in memory."""
        return self.name in FOLDER_DATASETS

    def folder_counts(self) -> FolderCounts:
        """Classes and images of the folder, without reading an image (ImageNet: ILSVRC-2012's)."""
        return ILSVRC2012 if self.name == "imagenet" else folder_counts(self.root)


def check_hold_out(cfg: DataConfig, counts: FolderCounts) -> None:
    """Every class keeps training images after ``val_per_class`` of them are held out."""
    if counts.smallest_class <= cfg.val_per_class:
        raise ConfigError(
            "dataset.val_per_class",
            f"{cfg.val_per_class} leaves no training images: the smallest class "
            f"folder in {os.path.join(cfg.root, 'train')} has {counts.smallest_class}",
        )


def num_classes(cfg: DataConfig) -> int:
    """Classes of ``cfg``'s dataset, without loading it."""
    if cfg.from_folder:
        return cfg.folder_counts().classes
    return {"cifar100": 100, "synthetic": cfg.synthetic_classes}.get(cfg.name, 10)


def split_sizes(cfg: DataConfig) -> tuple[int, int, int]:
    """(train, val, test) image counts of ``cfg`` without loading anything (for planning)."""
    if cfg.from_folder:
        counts = cfg.folder_counts()
        check_hold_out(cfg, counts)
        val = cfg.val_per_class * counts.classes
        total, test = counts.train, counts.test
    else:
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
    if cfg.eval_limit is not None:
        val, test = min(val, cfg.eval_limit), min(test, cfg.eval_limit)
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

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}

    epochs: int | None = setting(
        None,
        f"epochs to train; give epochs or iterations (neither: the paper's {PAPER_ITERATIONS:,} iterations)",
        "≥ 1",
    )
    iterations: int | None = setting(None, "optimizer steps to train, rounded to whole epochs", "≥ 1")
    batch_size: int = setting(128, "images per step (with resources.workers > 1: the global batch)", "≥ 1")
    lr: float = setting(0.1, "learning rate (after the warm-up)", "> 0")
    momentum: float = setting(0.9, "SGD momentum", "[0, 1)")
    nesterov: bool = setting(False, "Nesterov momentum")
    weight_decay: float = setting(1e-4, "L2 weight decay", "≥ 0")
    bn_weight_decay: bool = setting(True, "decay batch norm's weights and biases too (the paper decays every weight)")
    schedule: str = setting(
        "multistep", "learning-rate schedule: × gamma at the milestones, cosine, or constant", SCHEDULES
    )
    milestones: tuple[float, ...] = setting(
        (0.5, 0.75), "fractions of the run where multistep multiplies the lr by gamma", "increasing, each in (0, 1)"
    )
    gamma: float = setting(0.1, "multistep's factor at each milestone", "(0, 1)")
    warmup_iterations: int = setting(0, "steps at warmup_lr before lr (ResNet-110, 2015 §4.2: 400 at 0.01)", "≥ 0")
    warmup_lr: float = setting(0.01, "learning rate during the warm-up", "> 0")
    label_smoothing: float = setting(0.0, "label smoothing of the loss", "[0, 1)")
    # BN keeps nets whose weights blew up finite, so non-finite alone misses e.g. lr 10.
    divergence_factor: float = setting(
        50.0, "a step loss above this × chance level (ln classes) declares the run diverged (0: never)", "≥ 0"
    )
    # false: no collectives in BN, per-GPU statistics as fb.resnet.torch and Goyal et al. 2017 train.
    sync_bn: bool = setting(
        True, "data-parallel trials: batch norm over the global batch (true) or each process's part (false)"
    )
    # Speed levers: how fast, never what is computed (no hyperparameter changes). "auto" is the
    # fastest measured setting of the device (docs/benchmarks.md): bf16 autocast and channels_last
    # on CUDA; fp32 and the default layout elsewhere, so CPU runs stay exact.
    precision: str = setting(
        "auto", "fp32, bf16 autocast or fp16 with a grad scaler (auto: bf16 on CUDA, else fp32)", PRECISIONS
    )
    channels_last: bool | Literal["auto"] = setting("auto", "NHWC memory layout (auto: on CUDA only)")
    compile: bool | str = setting(
        False, "torch.compile the model: true (its default mode) or a mode", (True, False, *COMPILE_MODES)
    )
    fused_sgd: bool = setting(True, "one fused kernel per optimizer step where torch has it (CPU, CUDA)")
    seed: int = setting(0, "seed of the initial weights, the data order and augmentation")
    device: str = setting(
        "auto", "where the trial trains (auto: cuda if present, else cpu)", "auto, cpu, cuda, cuda:N, mps"
    )

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

    SECTIONS: ClassVar[dict] = {"model": ModelConfig, "dataset": DataConfig, "train": TrainConfig}

    def __post_init__(self) -> None:
        if self.dataset.from_folder and self.train.epochs is None and self.train.iterations is None:
            # The default, 64k iterations, is the CIFAR recipe's (2015 §4.2): a few ImageNet epochs.
            raise ConfigError(
                "train.epochs",
                f"give train.epochs or train.iterations for {self.dataset.name} (ImageNet: "
                f"90 epochs, lr ÷10 at 30 and 60: train.milestones [0.333333, 0.666667]; "
                f"the paper: up to 600k iterations of batch 256)",
            )

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> RunConfig:
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


BN_SMALLEST_BATCH = 2  # images a batch norm needs in training: one breaks it where maps are 1×1


def batch_sizes(n: int, batch_size: int, *, smallest: int = 1) -> list[int]:
    """The sizes of the batches of ``n`` items in order: full ones, then the rest, which joins
    the batch before it when it holds fewer than ``smallest`` items. Training asks for 2 per
    batch norm: one image breaks it where a stage's maps are 1×1 (a process's share of a last
    batch, with per-process statistics, more often still)."""
    sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    if len(sizes) > 1 and sizes[-1] < smallest:
        sizes[-2:] = [sizes[-2] + sizes[-1]]
    return sizes


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """A training epoch's batches, as one process's loader makes them (a last batch of one image
    joins the one before: batch_sizes)."""
    return len(batch_sizes(train_images, batch_size, smallest=BN_SMALLEST_BATCH))
