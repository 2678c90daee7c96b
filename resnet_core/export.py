"""A trained model as one standalone file, and the one call that loads it ready for evaluation.

The file (``torch.load(path, weights_only=True)`` reads it: plain types and tensors only) holds
the weights (``resnet_core.resnet.ResNet``'s state dict), the model's settings, the classes,
the input side and the data normalisation the trainer used, the epoch the weights are from with
its metrics, and where they came from (the sweep, the trial and its whole flat config)::

    from resnet_core import load_model, load_export

    model = load_model("best.pt")            # a ResNet in eval mode, on the CPU
    exported = load_export("best.pt")         # the model and everything the file says
    logits = exported.model(exported.normalize(images))  # uint8 N×3×S×S at exported.input_size
    exported.class_names[logits.argmax(1)[0]]

The ImageNet nets that torchvision also builds load into torchvision's ResNet: arch
``imagenet``, residual, basic or bottleneck blocks, shortcut B, width 1, depth 18/34/50/101/152
with 2015 Table 1's stages, and for bottlenecks ``bottleneck_stride: 3x3`` (torchvision strides
the 3×3 conv, "ResNet v1.5"; the paper's 1×1 stride has the same weights but computes
something else). Only the names differ (``torchvision_state_dict``)::

    net = exported.torchvision_model()        # torchvision.models.resnet50(num_classes=…), loaded

CIFAR nets (3×3 stem, three stages), plain nets, pre-activation blocks, shortcuts A and C and
other widths or stages have no torchvision counterpart: ``torchvision_name`` says which setting.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig, RunConfig, default_cache_dir, num_classes
from .data import make_loaders
from .errors import ConfigError
from .folders import list_folder
from .registry import IMAGENET_STAGES
from .resnet import ResNet, build_model

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Exported",
    "class_names",
    "load_export",
    "load_model",
    "save_export",
    "torchvision_name",
    "torchvision_state_dict",
]

FORMAT = "resnet-sweep model"
FORMAT_VERSION = 1


def class_names(run: RunConfig) -> list[str]:
    """The names of the dataset's classes, by label: the digit, CIFAR's names (torchvision's
    list, from the dataset's own files), an image folder's class folders; a synthetic class is
    its number."""
    data = run.dataset
    if data.from_folder:
        return list(list_folder(data.root).classes)
    if data.name.startswith("cifar"):
        from torchvision.datasets import CIFAR10, CIFAR100

        root = Path(data.cache_dir).expanduser() if data.cache_dir else default_cache_dir()
        return list((CIFAR10 if data.name == "cifar10" else CIFAR100)(str(root), train=False).classes)
    return [str(k) for k in range(num_classes(data))]


def save_export(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    run: RunConfig,
    *,
    epoch: int,
    metrics: Mapping[str, float],
    source: Mapping[str, Any],
) -> None:
    """Write ``state_dict`` (a ResNet of ``run.model``) trained on ``run.dataset`` to ``path``.
    The normalisation is the trainer's, computed as it computes it (``make_loaders``, on the
    CPU) from the training split, which is loaded for it. ``source`` says where the weights come
    from (plain values). The file appears whole or not at all: it is written next to ``path``
    and renamed (an interrupted export leaves no partial file at ``path``)."""
    loaders = make_loaders(run, torch.device("cpu"), torch.Generator())
    mean, std = loaders.train.mean, loaders.train.std
    blob = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "state_dict": {name: t.detach().cpu().clone() for name, t in state_dict.items()},
        "model": run.model.to_dict(),
        "num_classes": loaders.num_classes,
        "input_size": run.dataset.image_size,
        "normalization": {"mode": run.dataset.normalize, "mean": mean.cpu().clone(), "std": std.cpu().clone()},
        "dataset": run.dataset.name,
        "class_names": class_names(run),
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "source": dict(source),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(partial, "xb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class Exported:
    """An exported model read back: the model (eval mode) and what the file says of it."""

    model: ResNet
    config: ModelConfig
    num_classes: int
    input_size: int  # the side of the images the model was trained on, in pixels
    mean: torch.Tensor  # normalisation: (images / 255 - mean) / std, broadcast to N×3×S×S
    std: torch.Tensor
    class_names: list[str]
    dataset: str
    epoch: int  # the epoch the weights are from
    metrics: dict[str, float] = field(default_factory=dict)  # that epoch's (val_error, test_error, …)
    source: dict[str, Any] = field(default_factory=dict)  # sweep, trial, its flat config, …

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images N×3×S×S (the dataset's images as its loader makes them) → the model's
        input, normalised as in training."""
        return (images.to(self.mean.device).float() / 255.0 - self.mean) / self.std

    def torchvision_model(self) -> nn.Module:
        """torchvision's ResNet of this model's depth with these weights, in eval mode (weights
        not downloaded). ConfigError when torchvision has no such net (``torchvision_name``)."""
        import torchvision.models

        net = getattr(torchvision.models, torchvision_name(self.config))(num_classes=self.num_classes)
        net.load_state_dict(torchvision_state_dict(self.model.state_dict(), self.config))
        return net.to(self.mean.device).eval()


def load_export(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Exported:
    """Read a file written by ``save_export`` (`resnet-sweep export`): the model with its
    weights on ``map_location``, in eval mode, and the file's settings and metrics. ValueError
    when the file is not such an export (or of a newer format)."""
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:  # no such file, no permission: as torch.load says it
        raise
    except Exception as err:
        raise ValueError(f"{path}: not a resnet-sweep model export ({type(err).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a resnet-sweep model export (`resnet-sweep export` writes them)")
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: export format version {blob.get('version')}; this resnet_core reads version {FORMAT_VERSION}"
        )
    config = ModelConfig(**blob["model"])
    with torch.device("meta"):  # no initialisation to pay for: every tensor comes from the file
        model = build_model(config, num_classes=blob["num_classes"])
    model.load_state_dict(blob["state_dict"], assign=True)
    norm = blob["normalization"]
    return Exported(
        model=model.eval(),
        config=config,
        num_classes=blob["num_classes"],
        input_size=blob["input_size"],
        mean=norm["mean"],
        std=norm["std"],
        class_names=list(blob["class_names"]),
        dataset=blob["dataset"],
        epoch=blob["epoch"],
        metrics=dict(blob["metrics"]),
        source=dict(blob["source"]),
    )


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ResNet:
    """The one-call loader: the exported model, weights on ``map_location``, in eval mode.
    Its input is normalised as in training: ``load_export(path).normalize(images)``."""
    return load_export(path, map_location).model


def torchvision_name(config: ModelConfig) -> str:
    """torchvision's builder of the same net (``resnet50``), or ConfigError naming the setting
    that torchvision's ResNets do not have."""
    bottleneck = config.block == "bottleneck"
    problems = [
        (config.arch != "imagenet", "model.arch", "CIFAR nets (3×3 stem, three stages)"),
        (not config.residual, "model.residual", "plain nets"),
        (config.block.startswith("preact"), "model.block", "pre-activation blocks"),
        (config.shortcut != "B", "model.shortcut", f"shortcut {config.shortcut} (torchvision's is B)"),
        (config.width != 1, "model.width", f"width {config.width}"),
        (
            IMAGENET_STAGES.get(config.depth) != config.blocks_per_stage,
            "model.stages",
            f"stages {list(config.blocks_per_stage)} (only 2015 Table 1's)",
        ),
        (
            bottleneck and config.bottleneck_stride != "3x3",
            "model.bottleneck_stride",
            "bottlenecks that stride the 1×1 conv (torchvision strides the 3×3: bottleneck_stride 3x3)",
        ),
    ]
    for wrong, setting, what in problems:
        if wrong:
            raise ConfigError(setting, f"torchvision's ResNets have no {what}")
    return f"resnet{config.depth}"


_TORCHVISION_STEM = {"0": "conv1", "1": "bn1"}  # our stem's conv and BN (nn.Sequential indices)


def _torchvision_key(name: str) -> str:
    """Our parameter name → torchvision's: the stem's conv and BN are conv1/bn1, stage i is
    layer{i+1}, a block's projection shortcut is its downsample; the rest is the same."""
    head, _, rest = name.partition(".")
    if head == "stem":
        index, _, tail = rest.partition(".")
        return f"{_TORCHVISION_STEM[index]}.{tail}"
    if head == "stages":
        stage, _, tail = rest.partition(".")
        return f"layer{int(stage) + 1}.{tail.replace('.shortcut.', '.downsample.')}"
    return name


def torchvision_state_dict(state_dict: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """``state_dict`` of our ResNet of ``config`` under torchvision's names: what
    ``torchvision.models.resnet{depth}(num_classes=…).load_state_dict`` takes. ConfigError when
    torchvision has no such net (``torchvision_name``)."""
    torchvision_name(config)
    return {_torchvision_key(name): tensor for name, tensor in state_dict.items()}
