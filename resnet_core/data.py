"""Datasets and their loaders.

Every in-memory dataset becomes three uint8 tensors (train / val / test, N×3×H×W) plus labels.
The DeviceLoader keeps them on the training device and does normalisation, the paper's
augmentation (2015 §4.2: 4-px zero padding, random 32×32 crop, random horizontal flip) and
shuffling as batched tensor ops, so a GPU never waits for a CPU worker (the airbench94
approach). It behaves the same on CPU. Image folders (imagenet, imagefolder) are too big for
that: they stream from disk (resnet_core.stream). ``make_loaders`` builds a run's loaders of either.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import (
    DATASETS,
    DEFAULT_VAL_SIZE,
    FOLDER_DATASETS,
    NORMALIZATIONS,
    DataConfig,
    RunConfig,
    batch_sizes,
    check_hold_out,
    default_cache_dir,
    num_classes,
    split_sizes,
)
from .distributed import Shard, smallest_training_batch
from .errors import ConfigError, DataUnavailableError
from .folders import ILSVRC2012, list_folder
from .stream import DecodePool, FolderImages, StreamLoader, running_stats

__all__ = [
    "DATASETS",
    "DEFAULT_VAL_SIZE",
    "NORMALIZATIONS",
    "DataConfig",
    "DataUnavailableError",
    "DeviceLoader",
    "Loaders",
    "Splits",
    "check_data",
    "default_cache_dir",
    "load_splits",
    "make_loaders",
    "num_classes",
    "split_sizes",
]


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

    def to(self, device: torch.device) -> Splits:
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
    if cfg.from_folder:
        raise ConfigError(
            "dataset.name",
            f"{cfg.name} streams from disk (make_loaders): it is never loaded into "
            f"memory (use one of {', '.join(n for n in DATASETS if n not in FOLDER_DATASETS)})",
        )
    loaders = {"cifar10": _cifar, "cifar100": _cifar, "digits": _digits, "synthetic": _synthetic}
    train_x, train_y, test_x, test_y, classes = loaders[cfg.name](cfg)
    val_size = cfg.val_size if cfg.val_size is not None else DEFAULT_VAL_SIZE[cfg.name]
    train_x, train_y, val_x, val_y = _split_off(train_x, train_y, val_size, cfg.split_seed)
    if cfg.train_limit is not None:
        train_x, train_y = train_x[: cfg.train_limit], train_y[: cfg.train_limit]
    val, test = _eval_sample(len(val_x), len(test_x), cfg)
    return Splits(train_x, train_y, val_x[val], val_y[val], test_x[test], test_y[test], classes)


def _eval_sample(val: int, test: int, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of ``val`` and ``test`` images to evaluate on: all, or a seeded sample of
    ``eval_limit`` of each (its own generator: the train/val split stays as it is)."""
    if cfg.eval_limit is None:
        return torch.arange(val), torch.arange(test)
    g = torch.Generator().manual_seed(cfg.split_seed + 1)
    return torch.randperm(val, generator=g)[: cfg.eval_limit], torch.randperm(test, generator=g)[: cfg.eval_limit]


class DeviceLoader:
    """Batches of one split, normalised (and augmented when training) on the split's device.

    With a ``shard`` of several data-parallel processes it yields this process's part of each
    global batch (resnet_core.distributed).

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
        shard: Shard = Shard(),
        smallest: int = 1,
    ) -> None:
        self.images, self.labels = images, labels
        self.shard, self.smallest = shard, smallest
        self.batch_size, self.train, self.augment = batch_size, train, augment and train
        self.mean, self.std = mean, std
        self.generator = generator
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.sizes())

    def sizes(self) -> list[int]:
        """The global batches' sizes, in order (a last one too small joins the one before)."""
        return batch_sizes(len(self.images), self.batch_size, smallest=self.smallest)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.images), self.images.device
        order = (
            torch.randperm(n, device=device, generator=self.generator) if self.train else torch.arange(n, device=device)
        )
        start = 0
        for size in self.sizes():
            idx, start = order[start : start + size], start + size
            # The augmentation is drawn for the whole global batch: the same numbers in every process.
            draws = self._crop_flip_draws(len(idx), device) if self.augment else None
            part = self.shard.part(len(idx))
            idx = idx[part]
            x = (self.images[idx].float() / 255.0 - self.mean) / self.std
            if draws is not None:
                x = self._pad_crop_flip(x, *(d[part] for d in draws))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]

    def _crop_flip_draws(self, b: int, device: torch.device, pad: int = 4):
        dy = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=self.generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=self.generator)
        flip = torch.rand(b, device=device, generator=self.generator) < 0.5
        return dy, dx, flip

    @staticmethod
    def _pad_crop_flip(
        x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4
    ) -> torch.Tensor:
        # Written by hand: torchvision's transforms crop one image at a time; this is one gather.
        b, c, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        out = padded[batch, chan, rows, cols]
        return torch.where(flip[:, None, None, None], out.flip(3), out)


def normalization_stats(train_x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) broadcastable to N×3×H×W, from the training images only."""
    x = train_x.float() / 255.0
    if mode == "pixel-mean":
        return x.mean(0, keepdim=True), torch.ones(1, 1, 1, 1, device=x.device)
    return x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True).clamp(min=1e-3)


MEAN_IMAGES = 2000  # training images (a seeded sample) the mean of an image folder is taken from


@dataclass
class FolderSplit:
    """An image folder's files (paths under its root) and labels, and which are train, val and
    test (indices into them)."""

    files: np.ndarray
    labels: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    num_classes: int


def split_folder(cfg: DataConfig) -> FolderSplit:
    """``cfg.root``'s images, checked, split with seed ``split_seed``: val holds out
    ``val_per_class`` training images of each class (the best epoch is chosen on it, never on
    the test set, as for CIFAR); val/ is the test set; train is in a seeded order, so
    ``train_limit`` keeps a sample of all classes (and ``eval_limit`` one of val and of test)."""
    listing = list_folder(cfg.root)
    counts = listing.counts()
    if cfg.name == "imagenet" and counts.classes != ILSVRC2012.classes:
        raise DataUnavailableError(
            f"{cfg.root}/train: {counts.classes} class folders, ImageNet (ILSVRC-2012) has "
            f"{ILSVRC2012.classes} (dataset.name: imagefolder reads any number)"
        )
    check_hold_out(cfg, counts)
    g = torch.Generator().manual_seed(cfg.split_seed)
    files, labels, train, val = [], [], [], []
    for k, (name, names) in enumerate(zip(listing.classes, listing.train)):
        order = torch.randperm(len(names), generator=g) + len(files)
        val.append(order[: cfg.val_per_class])
        train.append(order[cfg.val_per_class :])
        files += [f"train/{name}/{f}" for f in names]
        labels += [k] * len(names)
    first_test = len(files)
    for k, (name, names) in enumerate(zip(listing.classes, listing.test)):
        files += [f"val/{name}/{f}" for f in names]
        labels += [k] * len(names)
    train = torch.cat(train)
    train = train[torch.randperm(len(train), generator=g)][: cfg.train_limit]
    val, test = torch.cat(val), torch.arange(first_test, len(files))
    val_sample, test_sample = _eval_sample(len(val), len(test), cfg)
    return FolderSplit(
        np.array([f.encode() for f in files]),
        torch.tensor(labels),
        train,
        val[val_sample],
        test[test_sample],
        counts.classes,
    )


def check_data(cfg: DataConfig) -> None:
    """DataUnavailableError (one line naming the folder or cache) unless ``cfg``'s data can be
    had: a sweep's driver asks before any trial starts. CIFAR is downloaded into its cache."""
    if cfg.from_folder:
        split_folder(cfg)
    else:
        load_splits(cfg)


@dataclass
class Loaders:
    """A run's batches of train, val and test, and for image folders also the test set's ten
    crops (10-crop testing, 2015 Table 3)."""

    train: Iterable
    val: Iterable
    test: Iterable
    ten_crop: StreamLoader | None
    num_classes: int
    splits: Splits | None  # the data, when it is held in memory


def make_loaders(
    cfg: RunConfig,
    device: torch.device,
    generator: torch.Generator,
    *,
    channels_last: bool = False,
    splits: Splits | None = None,
    shard: Shard = Shard(),
) -> Loaders:
    """The loaders of ``cfg``'s data on ``device``: shuffling and augmentation draw from
    ``generator`` only. In-memory data (``splits``, else loaded) is moved to the device. With
    a ``shard`` of several processes every loader yields this process's part of each batch."""
    tc, dc = cfg.train, cfg.dataset
    # Evaluation in eval mode gives each image the same output in any batch: large batches
    # are cheaper (fewer launches), about 4 MB of input each.
    eval_batch = max(tc.batch_size, 1024 * 32 * 32 // (dc.image_size**2))
    if dc.from_folder:
        return _folder_loaders(cfg, device, generator, eval_batch=eval_batch, channels_last=channels_last, shard=shard)
    splits = (splits if splits is not None else load_splits(dc)).to(device)
    mean, std = normalization_stats(splits.train_x, dc.normalize)
    common = dict(mean=mean, std=std, channels_last=channels_last, shard=shard)
    train = DeviceLoader(
        splits.train_x,
        splits.train_y,
        batch_size=tc.batch_size,
        train=True,
        augment=dc.augment,
        smallest=smallest_training_batch(shard, tc.sync_bn),
        generator=generator,
        **common,
    )
    val = DeviceLoader(splits.val_x, splits.val_y, batch_size=eval_batch, **common)
    test = DeviceLoader(splits.test_x, splits.test_y, batch_size=eval_batch, **common)
    return Loaders(train, val, test, None, splits.num_classes, splits)


def _folder_loaders(
    cfg: RunConfig,
    device: torch.device,
    generator: torch.Generator,
    *,
    eval_batch: int,
    channels_last: bool,
    shard: Shard,
) -> Loaders:
    """2015 §3.4: training on random crops of the image at a random scale, flipped and lit
    (with ``augment``), the per-pixel mean (of centre crops of a training sample) subtracted;
    val and test on the centre crop; the ten crops of the test set for the final metric."""
    dc = cfg.dataset
    split = split_folder(dc)
    workers = dc.workers if dc.workers is not None else torch.get_num_threads()
    images = FolderImages(dc.root, split.files, crop=dc.image_size, scale_range=dc.scale_range)
    pool = DecodePool(images, workers=workers, pin_memory=device.type == "cuda")
    labels = split.labels.to(device)

    def loader(files: torch.Tensor, batch_size: int, view: str, mean=None, std=None, **kw) -> StreamLoader:
        kw.setdefault("shard", shard)
        return StreamLoader(
            pool,
            files,
            labels[files.to(device)],
            batch_size=batch_size,
            view=view,
            mean=mean,
            std=std,
            channels_last=channels_last,
            **kw,
        )

    sample = loader(split.train[:MEAN_IMAGES], eval_batch, "centre", shard=Shard())  # every process: the same mean
    mean, std = running_stats((crops.flatten(0, 1) for crops, _ in sample.crops()), dc.normalize)
    augment = dict(generator=generator, flip=dc.augment, lighting=dc.lighting if dc.augment else 0.0)
    return Loaders(
        train=loader(
            split.train,
            cfg.train.batch_size,
            "random" if dc.augment else "centre",
            mean,
            std,
            train=True,
            smallest=smallest_training_batch(shard, cfg.train.sync_bn),
            **augment,
        ),
        val=loader(split.val, eval_batch, "centre", mean, std),
        test=loader(split.test, eval_batch, "centre", mean, std),
        ten_crop=loader(split.test, max(1, eval_batch // 10), "five", mean, std),
        num_classes=split.num_classes,
        splits=None,
    )
