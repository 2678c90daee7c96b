"""Decoded and augmented images/s of the streaming image-folder loader, per worker process,
against the conventional torchvision pipeline, side by side.

    python bench loader                         # 1,000 JPEGs of 400×350 px; workers 1, 2, 4, … up to the CPUs
    python bench loader --images 4000 --workers 4 8 16

It writes its own ImageFolder in a temporary folder: 10 classes of synthetic JPEG files
(quality 90) of 400×350 px, about an average ImageNet image (ILSVRC-2012 averages roughly
400×350 px and 110 KB; the files here are colour fields with noise to about that size, which
the title gives). Both pipelines do the paper's training augmentation (2015 §3.4: shorter side resized
to a random length in [256, 480], a random 224×224 crop, a random flip) and hand over float
batches normalised by a mean:

ours          ``resnet_core.data.make_loaders`` as a trial builds it (dataset.name imagefolder):
              worker processes read and decode (torchvision.io) and cut each crop as the
              matching box of the decoded image resized on its own (uint8); the training
              process normalises, flips and adds the PCA lighting on the training device.
conventional  torchvision's ImageFolder (PIL decode) + transforms.v2 (RandomResize(256, 481),
              RandomCrop(224), RandomHorizontalFlip, ToImage, ToDtype, Normalize) in the
              DataLoader's workers (persistent), as reproductions usually write it: the whole
              image resized, then cropped. It has no PCA lighting (torchvision has none).

Per number of workers: a fresh loader of each, one untimed warm-up epoch each (worker start,
page cache; ours also takes its mean image first), then ``--epochs`` (2) timed epochs over all
images each, taking turns (ours, conventional, ours, …) so that load from other work falls on
both, the device synchronised after each. "per worker" divides by the worker processes (0: the training process decodes):
images/s per CPU core while the cores outnumber the workers; on a machine with fewer cores than
workers + 1 the workers share them, and on CPU the training process's normalisation shares them
too. Workers decode whole batches, so the batch is small here (32: 31 of them in 1,000 images)
to keep the epoch's tail short; training batches of 256 over 5,000 steps have none to speak of.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.table import check_args, emit, machine, parse_with_smoke_test
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from resnet_core.data import make_loaders
from resnet_core.errors import ConfigError
from resnet_core.train import resolve_device

CLASSES = 10
WIDTH, HEIGHT = 400, 350
SMOKE_TEST = {"images": 64, "workers": [0, 1], "epochs": 1}


def write_images(root: Path, count: int) -> float:
    """``count`` JPEG files in root/train/<class>/ (and one per class in val/); their mean size in KB."""
    from torchvision.io import encode_jpeg

    g = torch.Generator().manual_seed(0)
    sizes = []
    for i in range(count + CLASSES):
        split = "train" if i < count else "val"
        folder = root / split / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        field = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(HEIGHT, WIDTH), mode="bicubic")[0]
        # Noise enough for ImageNet's bytes per image (about 110 KB at this size): decoding costs by the byte.
        pixels = (0.3 * field + 0.7 * torch.rand(3, HEIGHT, WIDTH, generator=g)).clamp(0, 1)
        data = encode_jpeg((pixels * 255).to(torch.uint8), quality=90).numpy().tobytes()
        (folder / f"{i}.JPEG").write_bytes(data)
        if split == "train":
            sizes.append(len(data))
    return sum(sizes) / len(sizes) / 1024


def ours(root: Path, workers: int, args):
    """The training batches of a trial's loader (its mean image taken first)."""
    cfg = RunConfig(
        model=ModelConfig(arch="imagenet"),
        train=TrainConfig(batch_size=args.batch_size, epochs=1),
        dataset=DataConfig(name="imagefolder", root=str(root), val_per_class=1, workers=workers),
    )
    loaders = make_loaders(cfg, args.device, torch.Generator(args.device).manual_seed(0))
    return lambda: loaders.train


def conventional(root: Path, workers: int, args):
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.RandomResize(256, 481),
            v2.RandomCrop(224),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [1.0, 1.0, 1.0]),
        ]
    )
    loader = DataLoader(
        ImageFolder(str(root / "train"), transform=transform),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=args.device.type == "cuda",
    )

    def batches():
        for x, y in loader:
            yield x.to(args.device, non_blocking=True), y.to(args.device, non_blocking=True)

    return batches


def images_per_second(pipelines: dict, epochs: int, device: torch.device) -> dict[str, float]:
    """Each pipeline's images/s over ``epochs`` passes, after one untimed pass each; the timed
    passes take turns (A B A B …), so load from other work falls on both."""
    for batches in pipelines.values():
        for _ in batches():
            pass
    seconds, seen = dict.fromkeys(pipelines, 0.0), dict.fromkeys(pipelines, 0)
    for _ in range(epochs):
        for name, batches in pipelines.items():
            start = time.perf_counter()
            for x, _ in batches():
                seen[name] += len(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name] += time.perf_counter() - start
    return {name: seen[name] / seconds[name] for name in pipelines}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench loader",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cpus = len(os.sched_getaffinity(0))
    default_workers = [w for w in (1, 2, 4, 8, 16, 32, 64) if w <= max(2, cpus)]
    p.add_argument("--images", type=int, default=1000, help="training images to write and read (default 1000)")
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=default_workers,
        help=f"worker processes per row (default {' '.join(map(str, default_workers))}: up to the CPUs)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs of each, after one untimed warm-up epoch")
    p.add_argument("--device", default="auto", help="where batches go and ours normalises: auto, cpu, cuda, …")
    args = parse_with_smoke_test(p, argv, SMOKE_TEST)
    check_args(
        p,
        {
            "--images": (args.images, 2 * CLASSES),
            "--batch-size": (args.batch_size, 1),
            "--epochs": (args.epochs, 1),
            "--workers": (min(args.workers), 0),
        },
    )
    try:
        args.device = resolve_device(args.device)
    except ConfigError as err:
        p.error(f"--device: {err.reason}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, load_before = [], os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        kb = write_images(Path(tmp), args.images)
        for workers in args.workers:
            pipelines = {"ours": ours(Path(tmp), workers, args), "conventional": conventional(Path(tmp), workers, args)}
            speeds = images_per_second(pipelines, args.epochs, args.device)
            print(
                f"workers {workers:>2}: " + ", ".join(f"{k} {v:.1f}" for k, v in speeds.items()) + " images/s",
                flush=True,
            )
            for name, speed in speeds.items():
                rows.append(
                    (
                        name,
                        str(workers),
                        f"{speed:.1f}",
                        f"{speed / max(workers, 1):.1f}",
                        f"{speed / speeds['conventional']:.2f}x",
                    )
                )
    title = (
        f"{args.images:,} JPEGs of {WIDTH}×{HEIGHT} px ({kb:.0f} KB on average), training augmentation, batch "
        f"{args.batch_size}, {args.epochs} timed epoch(s) ({machine(str(args.device))}, "
        f"{len(os.sched_getaffinity(0))} CPUs, load avg {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after)"
    )
    emit(title, ("pipeline", "workers", "images/s", "per worker", "vs conventional"), rows, args.out, argv, "loader")
    return 0
