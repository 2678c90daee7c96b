"""Command-line flags for model, dataset and recipe settings: one table, so every flag maps to
exactly one flat config key (``--depth`` ↔ ``model.depth``) and errors can name the flag."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resnet_core.config import (
    ARCHS,
    BLOCK_NAMES,
    BOTTLENECK_STRIDES,
    DATASETS,
    NORMALIZATIONS,
    PRECISIONS,
    SCHEDULES,
    SHORTCUTS,
)
from resnet_core.registry import VARIANTS

__all__ = ["MODEL_FLAGS", "TRAIN_FLAGS", "add_flags", "field_to_flag", "flat_from_args"]


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


@dataclass(frozen=True)
class Flag:
    key: str  # flat config key
    flag: str
    help: str
    type: Callable | None = None
    choices: tuple | None = None
    boolean: bool = False

    @property
    def dest(self) -> str:
        return self.key.replace(".", "__")


MODEL_FLAGS = (
    Flag(
        "model.arch", "--arch", "network family: CIFAR (3 stages, 32 px) or ImageNet (4 stages, 224 px)", choices=ARCHS
    ),
    Flag(
        "model.depth", "--depth", "weighted layers: 6n+2 (basic) / 9n+2 (bottleneck) on CIFAR; 18…152 on ImageNet", int
    ),
    Flag(
        "model.block",
        "--block",
        "residual block (default: basic; bottleneck for ImageNet depth ≥ 50)",
        choices=tuple(BLOCK_NAMES),
    ),
    Flag(
        "model.shortcut",
        "--shortcut",
        "A: zero-pad identity, B: projection where shape changes, C: projection everywhere",
        choices=SHORTCUTS,
    ),
    Flag("model.residual", "--residual", "shortcuts on (--no-residual: the plain net)", boolean=True),
    Flag("model.width", "--width", "width multiplier K (16K/32K/64K filters on CIFAR)", int),
    Flag("model.stages", "--stages", "custom blocks per stage, e.g. 3,4,6,3 (sets the depth)", _int_list),
    Flag(
        "model.bottleneck_stride",
        "--bottleneck-stride",
        "stride on the first 1x1 (paper) or the 3x3 (torchvision)",
        choices=BOTTLENECK_STRIDES,
    ),
    Flag("model.num_classes", "--num-classes", "classifier outputs (default: the dataset's classes)", int),
    Flag("model.zero_init_last", "--zero-init-last", "zero-init each block's last BN", boolean=True),
    Flag("model.drop_path", "--drop-path", "stochastic depth rate of the deepest block", float),
    Flag("model.dropout", "--dropout", "dropout before the classifier", float),
)

TRAIN_FLAGS = (
    Flag("dataset.name", "--dataset", "data set", choices=DATASETS),
    Flag("dataset.val_size", "--val-size", "images split off the training set for choosing the best epoch", int),
    Flag("dataset.cache_dir", "--cache-dir", "where CIFAR is (or is downloaded to)", str),
    Flag(
        "dataset.image_size",
        "--image-size",
        "digits/synthetic image side; imagenet/imagefolder crop (224) in pixels",
        int,
    ),
    Flag("dataset.root", "--root", "imagenet/imagefolder: the folder holding train/ and val/ of class folders", str),
    Flag(
        "dataset.val_per_class",
        "--val-per-class",
        "imagenet/imagefolder: training images per class held out as val (10)",
        int,
    ),
    Flag(
        "dataset.scale_range",
        "--scale-range",
        "imagenet/imagefolder: shorter side at random in LOW,HIGH (256,480)",
        _int_list,
    ),
    Flag("dataset.lighting", "--lighting", "imagenet/imagefolder: PCA colour noise std (0.1; 0: none)", float),
    Flag("dataset.workers", "--workers", "imagenet/imagefolder: image decoding processes (default: one per CPU)", int),
    Flag("dataset.normalize", "--normalize", "per-pixel mean (paper) or per-channel mean/std", choices=NORMALIZATIONS),
    Flag(
        "dataset.augment",
        "--augment",
        "pad-crop-flip (CIFAR), scale-crop-flip-lighting (folders) (--no-augment: none)",
        boolean=True,
    ),
    Flag("dataset.train_limit", "--train-limit", "use only the first N training images", int),
    Flag("dataset.eval_limit", "--eval-limit", "evaluate on a seeded sample of N val and N test images", int),
    Flag("train.epochs", "--epochs", "epochs to train (lr drops stay at the milestones' fractions)", int),
    Flag("train.iterations", "--iterations", "optimizer steps to train (default: the paper's 64000)", int),
    Flag("train.batch_size", "--batch-size", "images per step", int),
    Flag("train.lr", "--lr", "learning rate after warm-up", float),
    Flag("train.momentum", "--momentum", "SGD momentum", float),
    Flag("train.weight_decay", "--weight-decay", "L2 weight decay", float),
    Flag("train.bn_weight_decay", "--bn-weight-decay", "decay BN weights and biases too (paper)", boolean=True),
    Flag("train.schedule", "--schedule", "learning-rate schedule", choices=SCHEDULES),
    Flag(
        "train.milestones", "--milestones", "fractions of the run where lr is divided by 10, e.g. 0.5,0.75", _float_list
    ),
    Flag("train.warmup_iterations", "--warmup-iterations", "steps at --warmup-lr before --lr (ResNet-110: 400)", int),
    Flag("train.warmup_lr", "--warmup-lr", "learning rate during warm-up", float),
    Flag("train.label_smoothing", "--label-smoothing", "label smoothing of the loss", float),
    Flag(
        "train.divergence_factor",
        "--divergence-factor",
        "declare divergence when a step loss exceeds this × ln(classes) (0: off)",
        float,
    ),
    Flag(
        "train.precision",
        "--precision",
        "fp32, bf16 autocast, fp16 with a grad scaler; auto: bf16 on CUDA, else fp32",
        choices=PRECISIONS,
    ),
    Flag("train.channels_last", "--channels-last", "NHWC memory layout (default: on CUDA only)", boolean=True),
    Flag("train.compile", "--compile", "torch.compile the model (a mode, e.g. reduce-overhead: in YAML)", boolean=True),
    Flag("train.fused_sgd", "--fused-sgd", "one fused SGD kernel per step (default: on)", boolean=True),
    Flag(
        "train.sync_bn", "--sync-bn", "data-parallel runs: batch norm over the global batch (default: on)", boolean=True
    ),
    Flag("train.seed", "--seed", "seed of init, shuffling and augmentation", int),
    Flag("train.device", "--device", "auto (cuda if present), cpu, cuda, cuda:N", str),
)


def add_flags(parser: argparse.ArgumentParser, flags, title: str) -> None:
    group = parser.add_argument_group(title)
    for f in flags:
        if f.boolean:
            group.add_argument(f.flag, dest=f.dest, action=argparse.BooleanOptionalAction, default=None, help=f.help)
        else:
            group.add_argument(
                f.flag,
                dest=f.dest,
                type=f.type,
                choices=f.choices,
                default=None,
                help=f.help,
                metavar=None if f.choices else f.flag.lstrip("-").upper().replace("-", "_"),
            )


def add_variant_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        dest="variant",
        choices=sorted(VARIANTS),
        help="start from a named variant (other model flags override it)",
        metavar="NAME",
    )


def flat_from_args(args: argparse.Namespace, flags) -> dict[str, Any]:
    flat = {f"model.{k}": v for k, v in VARIANTS.get(getattr(args, "variant", None), {}).items()}
    for f in flags:
        value = getattr(args, f.dest, None)
        if value is not None:
            flat[f.key] = value
    return flat


def field_to_flag(field: str) -> str:
    for f in MODEL_FLAGS + TRAIN_FLAGS:
        if f.key == field:
            return f.flag
    return field
