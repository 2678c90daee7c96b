"""Training images/s of our trainer, each speed lever on and off, against a conventional PyTorch
pipeline and against a bare loop, side by side; and the wall time of the paper's full recipe.

    python bench trainer                       # CUDA: ResNet-20/56/110, every lever; CPU: ResNet-20
    python bench trainer --depth 20 --levers off fused-sgd bf16 --images 1024

Rows (the same model, seed, synthetic 32×32 images, augmentation, normalisation, batch, loss,
SGD recipe and per-step lr schedule in each):

conventional  the usual recipe: PIL images + ``torchvision.transforms`` (RandomCrop(32, padding=4),
              RandomHorizontalFlip, ToTensor, Normalize) + ``DataLoader`` worker processes
              (persistent; pinned memory on CUDA) feeding a plain fp32 eager loop.
bare          forward + backward + optimizer step on batches sliced, normalised and augmented
              beforehand (kept on the device), with the trainer's default levers: the floor our
              loop's own cost is measured against ("vs bare": 1.00 means the loader and the
              bookkeeping cost nothing).
ours LEVERS   ``resnet_core.train.Trainer``'s own epoch loop, the levers added one at a time:
              off (fp32, eager, for-loop SGD) → fused-sgd → channels_last → bf16 → compile
              (torch.compile, default mode) → graphs (compile mode "reduce-overhead": CUDA graphs).
              The row equal to the trainer's defaults on this device is marked "(default)".

Each pipeline first runs one untimed warm-up epoch (CUDA context, cuDNN, compilation, worker
start); its time minus a steady epoch's is the "warm-up extra" (compilation for compile rows).
Then the timed epochs take turns (A B C … A B C …), so load from other work falls on all of
them; GPU epochs are bracketed by ``torch.cuda.synchronize``. "64k steps" extrapolates the
training of the paper's recipe (64,000 steps of batch 128, 2015 §4.2) from the measured rate,
64k × batch / (images/s), plus the warm-up extra; "+ evaluations" is what our trainer adds to a
run by evaluating 15,000 images (val + test, timed here) after each of its 182 epochs of 45,000
images. Ratios are measured in this run only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.table import check_args, emit, machine, parse_with_smoke_test
from resnet_core.config import PAPER_ITERATIONS
from resnet_core.data import DataConfig, DeviceLoader, load_splits, normalization_stats
from resnet_core.errors import ConfigError
from resnet_core.resnet import ModelConfig, build_model
from resnet_core.train import RunConfig, Speed, TrainConfig, Trainer, lr_factor, resolve_device

HELD_OUT = 16  # images load_splits sets aside as val; the benchmark never looks at them
SEED = 0
EVAL_IMAGES = 15_000  # val (5k) + test (10k) evaluated after each CIFAR epoch
EPOCH_IMAGES = 45_000
# The levers, added one at a time: each name turns on its lever on top of those before it.
LEVERS = {
    "off": dict(precision="fp32", channels_last=False, compile=False, fused_sgd=False),
    "fused-sgd": dict(fused_sgd=True),
    "channels_last": dict(channels_last=True),
    "bf16": dict(precision="bf16"),
    "compile": dict(compile=True),
    "graphs": dict(compile="reduce-overhead"),
}
SMOKE_TEST = dict(depth=[8], images=256, batch_size=64, epochs=1, workers=1, levers=["off", "fused-sgd"])


def lever_settings(name: str) -> dict:
    """The TrainConfig speed settings of row ``name``: every lever up to and including it."""
    settings: dict = {}
    for lever, change in LEVERS.items():
        settings.update(change)
        if lever == name:
            return settings
    raise KeyError(name)


@dataclass
class Pipeline:
    label: str
    options: str
    run_epoch: Callable[[], None]
    warmup_s: float = 0.0
    seconds: float = 0.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], None]) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# --- the pipelines ---------------------------------------------------------------------------
def ours(cfg: RunConfig, splits) -> tuple[Callable[[], None], Trainer]:
    trainer = Trainer(cfg, splits=splits)

    def run_epoch() -> None:
        if trainer._train_epoch() is None:
            raise RuntimeError(f"ours ({trainer.speed}): the training loss stopped being finite")

    return run_epoch, trainer


def bare(cfg: RunConfig, splits) -> Callable[[], None]:
    """Forward + backward + step and nothing else, on batches made beforehand."""
    trainer = Trainer(cfg, splits=splits)
    batches = list(trainer.train_loader)

    def run_epoch() -> None:
        for x, y in batches:
            with trainer._autocast():
                loss = trainer.criterion(trainer.forward(x), y)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()

    return run_epoch


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
    """A plain fp32 eager loop fed by DataLoader workers."""
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
    optimizer = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    total_steps = (tc.epochs or 1) * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, tc))
    criterion = nn.CrossEntropyLoss()

    def run_epoch() -> None:
        model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double() * len(y)
        if not torch.isfinite(loss_sum):
            raise RuntimeError("conventional: the training loss stopped being finite")

    return run_epoch


def eval_seconds(trainer: Trainer, splits, device: torch.device) -> float:
    """Seconds to evaluate EVAL_IMAGES images the way the trainer does after each epoch."""
    n = min(len(splits.train_x), EVAL_IMAGES)
    loader = DeviceLoader(
        trainer.splits.train_x[:n],
        trainer.splits.train_y[:n],
        batch_size=trainer.val_loader.batch_size,
        mean=trainer.train_loader.mean,
        std=trainer.train_loader.std,
        channels_last=trainer.speed.channels_last,
    )
    trainer.evaluate(loader)  # warm-up (a compiled model compiles its eval graph here)
    return timed(device, lambda: trainer.evaluate(loader)) * EVAL_IMAGES / n


# --- one depth -------------------------------------------------------------------------------
def bench_depth(depth: int, args, splits, data: DataConfig) -> list[tuple[str, ...]]:
    device = args.device

    def config(**speed) -> RunConfig:
        train = TrainConfig(epochs=1 + args.epochs, batch_size=args.batch_size, seed=SEED, device=str(device), **speed)
        return RunConfig(model=ModelConfig(depth=depth), dataset=data, train=train)

    default = Speed.resolve(config().train, device)
    pipelines = [
        Pipeline("conventional", f"fp32, {args.workers} workers", conventional(config(), splits, args.workers)),
        Pipeline("bare", str(default), bare(config(), splits)),
    ]
    trainers = {}
    for name in args.levers:
        run_epoch, trainers[name] = ours(config(**lever_settings(name)), splits)
        mark = " (default)" if trainers[name].speed == default else ""
        pipelines.append(Pipeline(f"ours {name}", f"{trainers[name].speed}{mark}", run_epoch))

    images = len(splits.train_x)
    for p in pipelines:
        print(f"  ResNet-{depth} warm-up: {p.label} …", flush=True)
        p.warmup_s = timed(device, p.run_epoch)
    for _ in range(args.epochs):
        for p in pipelines:
            p.seconds += timed(device, p.run_epoch)

    rate = {p.label: args.epochs * images / p.seconds for p in pipelines}
    epochs_of_recipe = PAPER_ITERATIONS * args.batch_size / EPOCH_IMAGES
    rows = []
    for p in pipelines:
        extra = max(0.0, p.warmup_s - p.seconds / args.epochs)
        trainer = trainers.get(p.label.removeprefix("ours "))
        evals = epochs_of_recipe * eval_seconds(trainer, splits, device) if trainer else None
        steps = PAPER_ITERATIONS * args.batch_size / rate[p.label] + extra
        rows.append(
            (
                f"ResNet-{depth}",
                p.label,
                p.options,
                f"{rate[p.label]:,.0f}",
                f"{rate[p.label] / rate['conventional']:.2f}x",
                f"{rate[p.label] / rate['bare']:.2f}x",
                f"{extra:.1f}",
                _duration(steps),
                "–" if evals is None else _duration(evals),
            )
        )
    return rows


def _duration(seconds: float) -> str:
    if seconds < 600:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


COLUMNS = (
    "model",
    "pipeline",
    "settings",
    "images/s",
    "vs conventional",
    "vs bare",
    "warm-up extra s",
    "64k steps",
    "+ evaluations",
)


# --- entry point -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench trainer",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--depth", type=int, nargs="+", help="CIFAR ResNet depths (default 20 56 110 on CUDA, 20 on CPU)")
    p.add_argument(
        "--levers",
        nargs="+",
        choices=tuple(LEVERS),
        help="rows of ours (default: all on CUDA; all but compile and graphs on CPU)",
    )
    p.add_argument("--images", type=int, help="training images per epoch (default 45000 on CUDA, 2048 on CPU)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs, after one untimed warm-up epoch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    p.add_argument("--workers", type=int, help="conventional: DataLoader workers (default 8 on CUDA, 2 on CPU)")
    args = parse_with_smoke_test(p, argv, SMOKE_TEST)
    try:
        args.device = resolve_device(args.device)
    except (RuntimeError, ConfigError) as err:
        p.error(f"--device: {err}")
    cuda = args.device.type == "cuda"
    args.depth = args.depth or ([20, 56, 110] if cuda else [20])
    args.levers = args.levers or list(LEVERS if cuda else list(LEVERS)[:4])
    args.images = args.images if args.images is not None else (45000 if cuda else 2048)
    args.workers = args.workers if args.workers is not None else (8 if cuda else 2)
    check_args(
        p,
        {
            "--images": (args.images, 16),
            "--batch-size": (args.batch_size, 1),
            "--epochs": (args.epochs, 1),
            "--workers": (args.workers, 0),
        },
        args.depth,
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = DataConfig(
        name="synthetic",
        synthetic_size=args.images + HELD_OUT,
        val_size=HELD_OUT,
        image_size=32,
        augment=True,
        normalize="channel",
    )
    splits = load_splits(data)  # CPU uint8; every pipeline reads these same images
    title = (
        f"{len(splits.train_x):,} images, batch {args.batch_size}, {args.epochs} timed epoch(s): "
        f"{machine(str(args.device))}"
    )
    print(title, flush=True)
    rows = [row for depth in args.depth for row in bench_depth(depth, args, splits, data)]
    emit(title, COLUMNS, rows, args.out, argv, "trainer")
    return 0
