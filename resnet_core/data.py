"""Datasets and the device-resident loader.

Every dataset becomes three uint8 tensors (train / val / test, N×3×H×W) plus labels. The loader
keeps them on the training device and does normalisation, the paper's augmentation (2015 §4.2:
4-px zero padding, random 32×32 crop, random horizontal flip) and shuffling as batched tensor
ops, so a GPU never waits for a CPU worker (the airbench94 approach). It behaves the same on CPU.
"""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from .config import (
    DATASETS,
    DEFAULT_VAL_SIZE,
    NORMALIZATIONS,
    DataConfig,
    default_cache_dir,
    num_classes,
    split_sizes,
)
from .errors import ConfigError

__all__ = [
    "DATASETS",
    "DEFAULT_VAL_SIZE",
    "NORMALIZATIONS",
    "DataConfig",
    "DataUnavailableError",
    "DeviceLoader",
    "Splits",
    "default_cache_dir",
    "load_splits",
    "num_classes",
    "split_sizes",
]

class DataUnavailableError(RuntimeError):
    """The dataset's files are not on disk and could not be downloaded."""


@dataclass
class Splits:
    """uint8 images N×3×H×W and int64 labels for train, val and test."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    def to(self, device: torch.device) -> "Splits":
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return Splits(**moved, num_classes=self.num_classes)


def _split_off(x: torch.Tensor, y: torch.Tensor, size: int, seed: int):
    """Seeded split of ``size`` examples off (x, y): returns (rest_x, rest_y, part_x, part_y)."""
    if size >= len(x):
        raise ConfigError("dataset.val_size", f"{size} leaves no training images (the split has {len(x)})")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    part, rest = perm[:size], perm[size:]
    return x[rest], y[rest], x[part], y[part]


@contextmanager
def _download_lock(root: Path):
    """One download/extraction at a time per cache folder: trials starting together on a node
    (or on nodes sharing the folder over NFS) would otherwise race to write the same files.
    torchvision has no lock of its own; an exclusive flock on a file in the folder is enough."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(root / ".download.lock", "a")
    except OSError:  # a read-only folder (archives put in place): nothing will be written there
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cifar(cfg: DataConfig):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if cfg.name == "cifar10" else CIFAR100
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    try:
        with _download_lock(root):
            train = cls(root=str(root), train=True, download=True)
            test = cls(root=str(root), train=False, download=True)
    except Exception as err:  # torchvision raises URLError/OSError/RuntimeError offline
        archive = "cifar-10-python.tar.gz" if cfg.name == "cifar10" else "cifar-100-python.tar.gz"
        raise DataUnavailableError(
            f"{cfg.name} is not in {root} and could not be downloaded ({type(err).__name__}: {err}). "
            f"Put {archive} (or its extracted folder) in {root}, or set dataset.cache_dir / "
            f"$RESNET_SWEEP_DATA to a folder that has it."
        ) from None

    def tensors(ds):
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.long)

    return *tensors(train), *tensors(test), len(train.classes)


def _digits(cfg: DataConfig):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(bunch.target, dtype=torch.long)
    test_size = len(x) // 5
    train_x, train_y, test_x, test_y = _split_off(x, y, test_size, seed=12345)  # fixed test set
    return train_x, train_y, test_x, test_y, 10


def _synthetic(cfg: DataConfig):
    """Learnable random images: each class is a fixed random pattern plus noise."""
    g = torch.Generator().manual_seed(cfg.split_seed + 777)
    k, s = cfg.synthetic_classes, cfg.image_size
    patterns = torch.rand(k, 3, s, s, generator=g)
    total = cfg.synthetic_size + max(cfg.synthetic_size // 4, 16)
    y = torch.randint(0, k, (total,), generator=g)
    x = 0.6 * patterns[y] + 0.4 * torch.rand(total, 3, s, s, generator=g)
    x = (x * 255).round().to(torch.uint8)
    n = cfg.synthetic_size
    return x[:n], y[:n], x[n:], y[n:], k


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg``'s dataset (CPU tensors). The test set is always the held-out one; val is a
    seeded split of the training set, so choosing the best epoch never sees the test set."""
    loaders = {"cifar10": _cifar, "cifar100": _cifar, "digits": _digits, "synthetic": _synthetic}
    train_x, train_y, test_x, test_y, classes = loaders[cfg.name](cfg)
    val_size = cfg.val_size if cfg.val_size is not None else DEFAULT_VAL_SIZE[cfg.name]
    train_x, train_y, val_x, val_y = _split_off(train_x, train_y, val_size, cfg.split_seed)
    if cfg.train_limit is not None:
        train_x, train_y = train_x[: cfg.train_limit], train_y[: cfg.train_limit]
    return Splits(train_x, train_y, val_x, val_y, test_x, test_y, classes)


class DeviceLoader:
    """Batches of one split, normalised (and augmented when training) on the split's device.

    ``mean``/``std`` come from the training split: the per-pixel mean image (2015 §4.2, std 1)
    or per-channel statistics. Shuffling and augmentation draw from ``generator`` only, so a
    checkpoint of its state restores the loader exactly at an epoch boundary.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        train: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        channels_last: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.augment = batch_size, train, augment and train
        self.mean, self.std = mean, std
        self.generator = generator
        self.channels_last = channels_last

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.images), self.images.device
        order = (
            torch.randperm(n, device=device, generator=self.generator)
            if self.train
            else torch.arange(n, device=device)
        )
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = (self.images[idx].float() / 255.0 - self.mean) / self.std
            if self.augment:
                x = self._pad_crop_flip(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]

    def _pad_crop_flip(self, x: torch.Tensor, pad: int = 4) -> torch.Tensor:
        # Written by hand: torchvision's transforms crop one image at a time; this is one gather.
        b, c, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=self.generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=self.generator)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        out = padded[batch, chan, rows, cols]
        flip = torch.rand(b, device=x.device, generator=self.generator) < 0.5
        return torch.where(flip[:, None, None, None], out.flip(3), out)


def normalization_stats(train_x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) broadcastable to N×3×H×W, from the training images only."""
    x = train_x.float() / 255.0
    if mode == "pixel-mean":
        return x.mean(0, keepdim=True), torch.ones(1, 1, 1, 1, device=x.device)
    return x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True).clamp(min=1e-3)
