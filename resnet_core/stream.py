"""The streaming loader of image folders, for data sets that do not fit in memory (ImageNet).

DataLoader worker processes read each image, decode it (torchvision.io) and cut its crop as
uint8 on the CPU: for training, the paper's scale augmentation (2015 §3.4: the shorter side
resized to a random length in [256, 480], a random 224×224 crop); for evaluation, the shorter
side at the range's low end and the centre crop, or the five crops of 10-crop testing (the
corners and the centre; their flips are made on the device). A crop is the matching box of the
decoded image resized on its own (antialiased): the whole image resized, then cropped, up to
the box's rounding to whole source pixels and its edges (the filter sees nothing outside the
box), at a fraction of the cost. Normalisation, flips and
the colour augmentation run batched on the training device.

Deterministic: every random number comes from the trainer's generator, in the training
process: each epoch's order and one seed per image (its scale and crop are drawn from that seed
in the worker, which knows the image's size), then each batch's flips and lighting. Which worker
decodes a batch changes nothing, so the generator's state restores the loader exactly at an
epoch boundary (as for DeviceLoader), with any number of workers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .config import batch_sizes
from .distributed import Shard
from .errors import DataUnavailableError

__all__ = ["EIGENVALUES", "EIGENVECTORS", "DecodePool", "FolderImages", "StreamLoader", "crop_boxes", "running_stats"]

# AlexNet's colour augmentation (Krizhevsky et al. 2012 §4.1): RGB in [0, 1] plus
# eigenvectors · (alpha ⊙ eigenvalues) of ImageNet's pixel covariance, alpha ~ N(0, std²) per
# image; the constants of fb.resnet.torch (datasets/imagenet.lua), the eigenvectors as columns.
EIGENVALUES = (0.2175, 0.0188, 0.0045)
EIGENVECTORS = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def crop_boxes(
    height: int, width: int, *, crop: int, side: int, view: str, rng: random.Random | None = None
) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) boxes of a height×width image: each, resized to crop×crop, is a
    crop of the image resized to shorter side ``side``; "random" draws the crop's place from ``rng``."""
    scale = side / min(height, width)
    resized_h, resized_w = max(crop, round(height * scale)), max(crop, round(width * scale))
    span_y, span_x = resized_h - crop, resized_w - crop
    if view == "random":
        places = [(rng.randint(0, span_y), rng.randint(0, span_x))]
    else:
        centre = (round(span_y / 2), round(span_x / 2))
        places = [centre] if view == "centre" else [(0, 0), (0, span_x), (span_y, 0), (span_y, span_x), centre]
    fy, fx = height / resized_h, width / resized_w
    boxes = []
    for y, x in places:
        top, left = round(y * fy), round(x * fx)
        boxes.append(
            (top, left, max(1, min(round(crop * fy), height - top)), max(1, min(round(crop * fx), width - left)))
        )
    return boxes


class FolderImages(Dataset):
    """The workers' side. A job is (view, rows): rows of (file index, seed); it returns the crops
    of its images, uint8 B×V×3×crop×crop. Views: "random", a training crop (2015 §3.4);
    "centre", evaluation's single view; "five" (V = 5), the corners and the centre, which with
    their flips are the ten crops of 10-crop testing."""

    def __init__(self, root: str, files: np.ndarray, *, crop: int, scale_range: tuple[int, int]) -> None:
        self.root, self.files = root, files  # paths under root as a bytes array: no per-item objects to copy on fork
        self.crop, self.scale_range = crop, scale_range

    def __getitem__(self, job: tuple[str, torch.Tensor]) -> torch.Tensor:
        view, rows = job
        if not len(rows):  # a data-parallel process's part of a short last batch can be empty
            return torch.empty((0, 5 if view == "five" else 1, 3, self.crop, self.crop), dtype=torch.uint8)
        return torch.stack([self.crops(index, view, seed) for index, seed in rows.tolist()])

    def crops(self, index: int, view: str, seed: int) -> torch.Tensor:
        # Imported here, not at the top: torchvision pulls in torch._dynamo (about 2 s), which
        # every sweep driver and in-memory trial would pay without ever decoding a file.
        import torchvision.transforms.v2.functional as TF
        from torchvision.io import ImageReadMode, decode_image, read_file

        path = os.path.join(self.root, self.files[index].decode())
        try:
            image = decode_image(read_file(path), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as err:
            raise DataUnavailableError(f"{path}: not a readable image ({err})") from None
        rng = random.Random(seed)
        side = rng.randint(*self.scale_range) if view == "random" else self.scale_range[0]
        boxes = crop_boxes(*image.shape[-2:], crop=self.crop, side=side, view=view, rng=rng)
        return torch.stack([TF.resized_crop(image, *box, [self.crop, self.crop], antialias=True) for box in boxes])


class _Jobs:
    """The sampler: the jobs of the current pass, set before it starts. A DataLoader iterates
    its sampler in the training process and sends each job to a worker."""

    def __init__(self) -> None:
        self.jobs: list = []

    def __iter__(self):
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)


class DecodePool:
    """One DataLoader for all splits: one set of worker processes, kept between passes (none
    with ``workers=0``: the training process decodes). One pass at a time."""

    def __init__(self, images: FolderImages, *, workers: int, pin_memory: bool) -> None:
        self.sampler = _Jobs()
        # Each worker decodes up to two batches ahead (DataLoader's default): batches of 256
        # crops of 224 px are 38 MB each in shared memory (/dev/shm).
        self.loader = DataLoader(
            images,
            batch_size=None,
            sampler=self.sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=pin_memory,
        )
        self.busy = False

    def run(self, jobs: list) -> Iterator[torch.Tensor]:
        if self.busy:
            raise RuntimeError("a pass over the image folder is already running: finish it first")
        self.sampler.jobs, self.busy = jobs, True
        try:
            yield from self.loader
        finally:
            self.busy = False


class StreamLoader:
    """Batches of one split: (images, labels) on the labels' device, normalised, and for
    training flipped and lit (2015 §3.4); a "five" loader yields each image's ten crops (the
    five and their flips) as 10 consecutive rows.

    ``files`` index the pool's files; ``mean``/``std`` broadcast to N×3×crop×crop."""

    def __init__(
        self,
        pool: DecodePool,
        files: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        view: str,
        mean: torch.Tensor,
        std: torch.Tensor,
        generator: torch.Generator | None = None,
        train: bool = False,
        flip: bool = False,
        lighting: float = 0.0,
        channels_last: bool = False,
        shard: Shard = Shard(),
        smallest: int = 1,
    ) -> None:
        self.pool, self.files, self.labels, self.shard, self.smallest = pool, files, labels, shard, smallest
        self.batch_size, self.view, self.train = batch_size, view, train
        self.mean, self.std, self.generator = mean, std, generator
        self.flip, self.lighting, self.channels_last = flip, lighting, channels_last
        if lighting:
            self.colours = torch.tensor(EIGENVECTORS, device=labels.device) * torch.tensor(
                EIGENVALUES, device=labels.device
            )

    def __len__(self) -> int:
        return len(self.sizes())

    def sizes(self) -> list[int]:
        """The global batches' sizes, in order (a last one too small joins the one before)."""
        return batch_sizes(len(self.files), self.batch_size, smallest=self.smallest)

    def crops(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 crops B×V×3×crop×crop, labels B) per batch, on the labels' device: this
        process's part of each global batch (its order and seeds are drawn for all)."""
        n, device = len(self.files), self.labels.device
        order = (
            torch.randperm(n, device=device, generator=self.generator) if self.train else torch.arange(n, device=device)
        )
        seeds = (
            torch.randint(0, 2**62, (n,), device=device, generator=self.generator).cpu()
            if self.view == "random"
            else torch.zeros(n, dtype=torch.long)
        )
        rows = torch.stack([self.files[order.cpu()], seeds], 1)
        labels, sizes = self.labels[order], self.sizes()
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        batches = [(slice(start, start + size), self.shard.part(size)) for start, size in zip(starts, sizes)]
        jobs = [(self.view, rows[batch][part]) for batch, part in batches]
        for (batch, part), crops in zip(batches, self.pool.run(jobs)):
            yield crops.to(device, non_blocking=True), labels[batch][part]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for (crops, y), size in zip(self.crops(), self.sizes()):
            b, views = crops.shape[:2]
            part = self.shard.part(size)  # the lighting and flips are drawn for the global batch
            x = crops.flatten(0, 1).float() / 255.0
            if self.lighting:
                alpha = torch.randn(size, 3, device=x.device, generator=self.generator)[part] * self.lighting
                x = x + (alpha @ self.colours.T)[:, :, None, None]
            x = (x - self.mean) / self.std
            if self.flip:
                flip = torch.rand(size, device=x.device, generator=self.generator)[part] < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            if views > 1:  # the ten crops: each image's five, then their mirror images
                x = x.unflatten(0, (b, views))
                x = torch.cat([x, x.flip(4)], 1).flatten(0, 1)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


def running_stats(batches: Iterable[torch.Tensor], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of uint8 N×3×H×W batches as data.normalization_stats gives them for one
    tensor (pixel-mean: the mean image and std 1; channel: per-channel mean and std), summed a
    batch at a time."""
    total = squares = None
    count = 0
    for batch in batches:
        x = batch.double() / 255.0
        total = x.sum(0) if total is None else total + x.sum(0)
        squares = (x * x).sum((0, 2, 3)) if squares is None else squares + (x * x).sum((0, 2, 3))
        count += len(x)
    if mode == "pixel-mean":
        return (total / count).float()[None], torch.ones(1, 1, 1, 1, device=total.device)
    pixels = count * total[0].numel()
    mean = total.sum((1, 2)) / pixels
    var = (squares - pixels * mean * mean) / max(pixels - 1, 1)
    return mean.float()[None, :, None, None], var.clamp(min=0).sqrt().float().clamp(min=1e-3)[None, :, None, None]
