"""Training images/s of our trainer against a conventional PyTorch input pipeline, side by side.

    PYTHONPATH=$PWD python bench/trainer_throughput.py --depth 20 --images 1024 --epochs 1

ours          ``resnet_core.train.Trainer``: the training split lives on the device; normalisation,
              pad-crop-flip and shuffling are batched tensor ops (``data.DeviceLoader``).
conventional  a list of PIL images + ``torchvision.transforms`` (RandomCrop(32, padding=4),
              RandomHorizontalFlip, ToTensor, Normalize) + ``torch.utils.data.DataLoader`` worker
              processes (pinned memory on CUDA) feeding a plain fp32 loop.

Both train the same model (``resnet_core.resnet.build_model``, same seed) on the same synthetic
images with the same augmentation, per-channel normalisation, batch size, loss, SGD step
(lr 0.1, momentum 0.9, weight decay 1e-4) and per-step lr scheduler, and both keep their running
loss/error on the device. The baseline is given persistent workers, so worker start-up is not
counted against it. Each pipeline first runs one untimed warm-up epoch (CUDA context, cuDNN,
``torch.compile``, worker start); then the pipelines take turns epoch by epoch, so load from other
work on a shared machine falls on all of them. Each timed epoch is bracketed by
``torch.cuda.synchronize`` on GPU and timed with ``time.perf_counter``. The ratio column is
measured in this run only.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from resnet_core.data import DataConfig, load_splits, normalization_stats
from resnet_core.errors import ConfigError
from resnet_core.resnet import ModelConfig, build_model
from resnet_core.train import PRECISIONS, RunConfig, TrainConfig, Trainer, lr_factor, resolve_device, steps_per_epoch

# Images split off as val/test by load_splits; the benchmark never looks at them.
HELD_OUT = 16
SEED = 0
SMOKE_TEST = dict(depth=8, images=256, batch_size=64, epochs=1, workers=1)


@dataclass
class Row:
    pipeline: str
    device: str
    precision: str
    options: str
    images_per_second: float


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(pipelines: dict[str, Callable[[], None]], epochs: int, images: int, device: torch.device) -> dict[str, float]:
    """Images/s of each pipeline's epochs. After one untimed warm-up epoch each, the timed epochs
    take turns (A B A B ...), so load from other work on a shared machine falls on all of them."""
    for run_epoch in pipelines.values():
        run_epoch()
    seconds = dict.fromkeys(pipelines, 0.0)
    for _ in range(epochs):
        for name, run_epoch in pipelines.items():
            sync(device)
            start = time.perf_counter()
            run_epoch()
            sync(device)
            seconds[name] += time.perf_counter() - start
    return {name: epochs * images / s for name, s in seconds.items()}


# --- ours ------------------------------------------------------------------------------------
def ours(cfg: RunConfig, splits) -> Callable[[], None]:
    """One epoch of ``Trainer``'s own loop per call."""
    trainer = Trainer(cfg, splits=splits)

    def run_epoch() -> None:
        if trainer._train_epoch() is None:
            raise RuntimeError(f"ours ({cfg.train.precision}): the training loss stopped being finite")

    return run_epoch


# --- conventional ----------------------------------------------------------------------------
class PILImages(torch.utils.data.Dataset):
    """torchvision-style dataset: PIL images in memory, a transform applied per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        from PIL import Image

        self.images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def conventional(cfg: RunConfig, splits, workers: int) -> Callable[[], None]:
    """One epoch of a plain fp32 loop fed by DataLoader workers per call."""
    from torchvision import transforms as T

    device, tc = resolve_device(cfg.train.device), cfg.train
    mean, std = normalization_stats(splits.train_x, "channel")
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean.flatten().tolist(), std.flatten().tolist()),
        ]
    )
    loader = torch.utils.data.DataLoader(
        PILImages(splits.train_x, splits.train_y, transform),
        batch_size=tc.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(tc.seed + 1),
    )
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model, num_classes=splits.num_classes).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=tc.lr, momentum=tc.momentum, nesterov=tc.nesterov, weight_decay=tc.weight_decay
    )
    total_steps = (cfg.train.epochs or 1) * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, tc))
    criterion = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)

    def run_epoch() -> None:
        model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        wrong = torch.zeros((), device=device, dtype=torch.long)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double() * len(y)
            wrong += (logits.detach().argmax(1) != y).sum()
        if not torch.isfinite(loss_sum):
            raise RuntimeError("conventional: the training loss stopped being finite")

    return run_epoch


# --- the table -------------------------------------------------------------------------------
COLUMNS = ("pipeline", "device", "precision", "options", "images/s", "vs conventional")


def table_cells(rows: list[Row]) -> list[tuple[str, ...]]:
    base = rows[0].images_per_second
    return [
        (r.pipeline, r.device, r.precision, r.options, f"{r.images_per_second:,.0f}", f"{r.images_per_second / base:.2f}x")
        for r in rows
    ]


def format_table(rows: list[Row]) -> str:
    cells = [COLUMNS, *table_cells(rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    right = {4, 5}  # numbers
    lines = [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(title: str, command: str, rows: list[Row]) -> str:
    lines = [f"### {title}", "", f"`{command}`", "", "| " + " | ".join(COLUMNS) + " |"]
    lines.append("|" + "|".join("---:" if i >= 4 else "---" for i in range(len(COLUMNS))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table_cells(rows)]
    return "\n".join(lines) + "\n\n"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"


# --- entry point -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=20, help="CIFAR ResNet depth, 6n+2 (default 20)")
    p.add_argument("--images", type=int, help="training images (default 45000 on CUDA, 2048 on CPU)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs, after one untimed warm-up epoch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--precision", nargs="+", choices=PRECISIONS,
        help="precision(s) of ours, one row each (default bf16 on CUDA, fp32 on CPU); the baseline is fp32",
    )
    p.add_argument("--channels-last", action="store_true", help="ours: channels_last model and batches")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile the model")
    p.add_argument("--workers", type=int, help="conventional: DataLoader workers (default 8 on CUDA, 2 on CPU)")
    p.add_argument("--out", type=Path, help="also append the table as markdown to this file")
    p.add_argument("--smoke-test", action="store_true", help="a tiny run that checks the benchmark works")
    args = p.parse_args(argv)

    if args.smoke_test:
        for key, value in SMOKE_TEST.items():
            setattr(args, key, value)
    try:
        args.device = resolve_device(args.device)
    except RuntimeError:
        p.error(f"--device: {args.device!r} is not a device")
    cuda = args.device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available")
    args.images = args.images if args.images is not None else (45000 if cuda else 2048)
    args.workers = args.workers if args.workers is not None else (8 if cuda else 2)
    args.precision = args.precision or (["bf16"] if cuda else ["fp32"])
    for flag, value, least in (("--images", args.images, 16), ("--batch-size", args.batch_size, 1),
                               ("--epochs", args.epochs, 1), ("--workers", args.workers, 0)):
        if value < least:
            p.error(f"{flag}: {value} must be at least {least}")
    try:
        ModelConfig(depth=args.depth)
    except ConfigError as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    data = DataConfig(
        name="synthetic",
        synthetic_size=args.images + HELD_OUT,
        val_size=HELD_OUT,
        image_size=32,
        augment=True,
        normalize="channel",
    )
    splits = load_splits(data)  # CPU uint8; both pipelines read these same images
    images = len(splits.train_x)

    def run_config(precision: str) -> RunConfig:
        train = TrainConfig(
            epochs=1 + args.epochs,
            batch_size=args.batch_size,
            precision=precision,
            channels_last=args.channels_last,
            compile=args.compile,
            seed=SEED,
            device=str(device),
        )
        return RunConfig(model=ModelConfig(depth=args.depth), dataset=data, train=train)

    model_cfg = ModelConfig(depth=args.depth)
    title = (
        f"{model_cfg.name}, {images:,} images, batch {args.batch_size}, {args.epochs} timed epoch(s): "
        f"{device_name(device)}, torch {torch.__version__}, {datetime.now(timezone.utc):%Y-%m-%d}"
    )
    print(title, flush=True)
    print(f"{steps_per_epoch(images, args.batch_size)} steps per epoch; 1 untimed warm-up epoch each, then timed epochs take turns", flush=True)

    ours_options = ", ".join(o for o, on in (("channels_last", args.channels_last), ("compile", args.compile)) if on) or "-"
    conventional_options = f"workers={args.workers}" + (", pin_memory" if device.type == "cuda" else "")
    pipelines = {"conventional": conventional(run_config("fp32"), splits, args.workers)}
    for precision in args.precision:
        pipelines[precision] = ours(run_config(precision), splits)
    speeds = measure(pipelines, args.epochs, images, device)
    rows = [Row("conventional", device.type, "fp32", conventional_options, speeds["conventional"])]
    rows += [Row("ours", device.type, p, ours_options, speeds[p]) for p in args.precision]

    print()
    print(format_table(rows))
    if args.out is not None:
        command = "python bench/trainer_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(format_markdown(title, command.strip(), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
