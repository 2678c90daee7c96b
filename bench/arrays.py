"""Trial arrays: K trials trained as one fused model (member-images/s) vs one trial alone and vs K
separate processes sharing the device (aggregate images/s).

    python bench arrays                        # CUDA: ResNet-20/56, K = 1, 2, 4, 8, 16; CPU: ResNet-20, K = 1, 2, 4, 8
    python bench arrays --depth 20 --ks 1,8 --no-processes

Rows, per depth and K (the same synthetic 32x32 images, augmentation, normalisation, batch and
precision in each; member k, and process k, is the trial of seed k):

one trial      ``resnet_core.train.Trainer`` alone, in this process: its own epoch loop
               (``Trainer._train_epoch``). Images/s of the one trial.
array of K     ``resnet_core.array.ArrayTrainer`` with K members (seeds 0..K-1): one grouped-conv
               model on one device, its own epoch loop (``ArrayTrainer._train_epoch``).
               Member-images/s = K x images per epoch / epoch seconds: the training work of K
               trials done per second. "vs one" is that over the one trial's images/s.
K processes    K independent training processes sharing the device, each a Trainer (what Ray Tune
               does with fractional GPUs), started and timed by ``bench/packing.py``'s machinery
               (``run_packed``: spawn, warm-up, one barrier, timed epochs): aggregate images/s =
               all images trained / (latest end - earliest start). "array vs processes" is the
               array's member-images/s over that. On CUDA by default only for K <= 8
               (``--process-ks``): sixteen CUDA contexts mostly measure start-up.

How. Per depth, the one trial trains one untimed warm-up epoch. Then for each K an array of K is
built and trains one untimed warm-up epoch (CUDA context already warm; allocator, cuDNN), after
which the timed epochs alternate: one trial, array, one trial, array, ... (so load from other
work falls on both); every epoch is bracketed by ``torch.cuda.synchronize`` on a GPU. The "one
trial" cell of a row is the one trial's rate in that row's turns, so each row's ratio is of two
numbers measured side by side. The array is freed before the next K. Then, after the in-process
rows of the depth, the K-process sets run one after another (one untimed warm-up epoch and the
same number of timed epochs each; see ``python bench packing --help``). One table per depth is
printed (and appended with --out) as soon as that depth is done.

Array memory: ``torch.cuda.max_memory_allocated`` during the array's epochs minus what was
allocated before the array was built (the shared images and the one trial): the array's own
weights, gradients, momentum, activations and batches. Tensors only; no CUDA context.

Threads. In this process torch keeps its default threads (all cores); each of K processes gets
``packing.threads_per_process(K)`` (on CPU the cores split between them). On a machine with a
few cores neither arrays nor processes can win on CPU (one trial already keeps the cores busy):
the CPU numbers are there to check the benchmark. Targets on an H100/H200: an array of 8
ResNet-20s >= 4x the images/s of one trial alone (stretch >= 8x), and ahead of 8 processes.

Default sizes on CUDA, meant to take about 80 s on an H100 for ResNet-20 and -56 (an estimate
from the trainer's and packing's rates, not yet measured; "elapsed" is printed): 10,000 images
per epoch, 1 warm-up + 1 timed epoch. Per depth, in this process: 31 array members (K = 1, 2, 4,
8, 16) x 2 epochs and 6 epochs of the one trial; then 15 processes in 4 sets (K = 1, 2, 4, 8)
x 2 epochs, each set a few seconds of start-up. The ResNet-20 table is printed first, so a run
cut short still has it. On CPU: ResNet-20, 1,024 images, 1 timed epoch, K = 1, 2, 4, 8 in
process and as processes (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from functools import partial
from pathlib import Path

NAME = "arrays"
SMOKE_TEST = {"depth": [8], "ks": [1, 2], "process_ks": [2], "images": 256, "batch_size": 64, "epochs": 1}
CUDA_DEPTHS, CPU_DEPTHS = [20, 56], [20]
CUDA_KS, CPU_KS = [1, 2, 4, 8, 16], [1, 2, 4, 8]
CUDA_PROCESS_MAX_K = 8  # default --process-ks on CUDA: the Ks up to this
CUDA_IMAGES, CPU_IMAGES = 10_000, 1024
CUDA_EPOCHS, CPU_EPOCHS = 1, 1

COLUMNS = (
    "model",
    "K",
    "one trial images/s",
    "array member-images/s",
    "array vs one",
    "K processes aggregate images/s",
    "array vs processes",
    "array memory",
)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device, fn) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _one_epoch(trainer, label: str) -> None:
    """One epoch of a Trainer (its own loop), counted as one epoch of its schedule."""
    if trainer._train_epoch() is None:
        raise RuntimeError(f"{label}: the training loss stopped being finite")
    trainer.epoch += 1


def _array_epoch(array, label: str) -> None:
    """One epoch of an ArrayTrainer (its own loop; ``run()`` counts epochs the same way)."""
    _, diverged = array._train_epoch()
    if diverged:
        raise RuntimeError(f"{label}: members {diverged} diverged")
    array.epoch += 1


def _load_note(when: str) -> None:
    """Say so when other work loads the CPU: every rate here (CUDA ones too: the host launches
    the kernels) assumes the machine is otherwise idle."""
    from bench.packing import cores

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not Unix
        return
    if load > cores() + 0.5:
        print(
            f"note: load average {load:.1f} on {cores()} cores {when}: other work shares the CPU, "
            "the rates here are not clean",
            flush=True,
        )


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


# --- in this process: one trial, arrays of K ------------------------------------------------
def in_process(depth: int, args) -> tuple[dict[int, dict], str]:
    """K → {"one": images/s, "array": member-images/s, "memory": bytes or None}; and the speed."""
    import torch

    from bench.packing import HELD_OUT, SEED
    from resnet_core.array import ArrayTrainer
    from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from resnet_core.data import load_splits
    from resnet_core.train import Trainer

    device, cuda = args.device, args.device.type == "cuda"
    data = DataConfig(
        name="synthetic",
        synthetic_size=args.images + HELD_OUT,
        val_size=HELD_OUT,
        image_size=32,
        augment=True,
        normalize="channel",
    )
    splits = load_splits(data).to(device)  # one copy on the device, read by every trainer
    images = len(splits.train_x)

    def config(seed: int, epochs: int) -> RunConfig:
        train = TrainConfig(
            epochs=epochs, batch_size=args.batch_size, precision=args.precision, seed=seed, device=str(device)
        )
        return RunConfig(model=ModelConfig(depth=depth), dataset=data, train=train)

    # The one trial: its schedule spans its warm-up and every timed epoch of every K.
    one = Trainer(config(SEED, 1 + args.epochs * len(args.ks)), splits=splits)
    one_epoch = partial(_one_epoch, one, f"ResNet-{depth}, one trial")
    warm = _timed(device, one_epoch)
    print(f"  ResNet-{depth} one trial ({one.speed}): warm-up epoch {warm:.1f} s", flush=True)

    results = {}
    for k in args.ks:
        _free(device)
        base = torch.cuda.memory_allocated(device) if cuda else 0
        array = ArrayTrainer([config(SEED + m, 1 + args.epochs) for m in range(k)], splits=splits)
        array_epoch = partial(_array_epoch, array, f"ResNet-{depth}, array of {k}")
        peak = 0
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        warm = _timed(device, array_epoch)
        if cuda:
            peak = torch.cuda.max_memory_allocated(device)
        one_s = array_s = 0.0
        for _ in range(args.epochs):
            one_s += _timed(device, one_epoch)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)  # the one trial's activations are not the array's
            array_s += _timed(device, array_epoch)
            if cuda:
                peak = max(peak, torch.cuda.max_memory_allocated(device))
        results[k] = {
            "one": args.epochs * images / one_s,
            "array": k * args.epochs * images / array_s,
            "memory": peak - base if cuda else None,
        }
        print(
            f"  ResNet-{depth} array of {k}: {results[k]['array']:,.0f} member-images/s "
            f"({results[k]['array'] / results[k]['one']:.2f}x one trial's {results[k]['one']:,.0f}), "
            f"warm-up epoch {warm:.1f} s",
            flush=True,
        )
        array = array_epoch = None  # freed before the next K is built
    speed = str(one.speed)
    one = one_epoch = splits = None
    _free(device)
    return results, speed


# --- K processes (bench/packing.py's machinery) ------------------------------------------------
def processes(depth: int, args) -> dict[int, float]:
    """K → aggregate images/s of K processes sharing the device."""
    from bench.packing import run_packed, summarize, threads_per_process

    cuda = args.device.type == "cuda"
    out = {}
    for k in args.process_ks:
        threads = threads_per_process(k, cuda)
        settings = {
            "images": args.images,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "depth": depth,
            "precision": args.precision,
            "device": str(args.device),
            "threads": threads,
        }
        t0 = time.perf_counter()
        row = summarize(k, run_packed(k, settings), threads)
        out[k] = row["aggregate"]
        print(
            f"  ResNet-{depth} {k} process(es): {out[k]:,.0f} images/s aggregate "
            f"({time.perf_counter() - t0:.1f} s with start-up and warm-up)",
            flush=True,
        )
    return out


def table_rows(depth: int, arrays: dict[int, dict], procs: dict[int, float]) -> list[tuple[str, ...]]:
    from bench.packing import gib

    rows = []
    for k, r in arrays.items():
        p = procs.get(k)
        rows.append(
            (
                f"ResNet-{depth}",
                str(k),
                f"{r['one']:,.0f}",
                f"{r['array']:,.0f}",
                f"{r['array'] / r['one']:.2f}x",
                "–" if p is None else f"{p:,.0f}",
                "–" if p is None else f"{r['array'] / p:.2f}x",
                "–" if r["memory"] is None else gib(r["memory"]),
            )
        )
    return rows


# --- entry point -----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    from bench.packing import parse_ks
    from bench.table import check_args
    from resnet_core.config import PRECISIONS
    from resnet_core.errors import ConfigError

    p = argparse.ArgumentParser(
        prog=f"python bench {NAME}",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--depth",
        type=int,
        nargs="+",
        help=f"CIFAR ResNet depths, 6n+2 (default {' '.join(map(str, CUDA_DEPTHS))} on CUDA, "
        f"{' '.join(map(str, CPU_DEPTHS))} on CPU)",
    )
    p.add_argument(
        "--ks",
        type=parse_ks,
        help=f"array sizes, comma-separated (default {','.join(map(str, CUDA_KS))} on CUDA, "
        f"{','.join(map(str, CPU_KS))} on CPU)",
    )
    p.add_argument(
        "--process-ks",
        type=parse_ks,
        help=f"the Ks also run as K separate processes (default: those of --ks up to "
        f"{CUDA_PROCESS_MAX_K} on CUDA, all of them on CPU)",
    )
    p.add_argument("--no-processes", action="store_true", help="skip the K-processes column")
    p.add_argument(
        "--images",
        type=int,
        help=f"training images per epoch, per member (default {CUDA_IMAGES} on CUDA, {CPU_IMAGES} on CPU)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help=f"timed epochs after one untimed warm-up epoch (default {CUDA_EPOCHS} on CUDA, {CPU_EPOCHS} on CPU)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="every trainer's precision (default auto: bf16 on CUDA where supported, fp32 elsewhere)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--out", type=Path, help="also append the tables as markdown to this file")
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="a tiny run (ResNet-8, arrays of K = 1, 2, 2 processes, 256 images) that checks the benchmark works",
    )
    args = p.parse_args(argv)

    if args.smoke_test:
        for key, value in SMOKE_TEST.items():
            setattr(args, key, value)
    from resnet_core.train import resolve_device  # imports torch

    try:
        args.device = resolve_device(args.device)
    except (ConfigError, RuntimeError) as err:
        p.error(f"--device: {err}")
    cuda = args.device.type == "cuda"
    args.depth = args.depth or list(CUDA_DEPTHS if cuda else CPU_DEPTHS)
    args.ks = args.ks or list(CUDA_KS if cuda else CPU_KS)
    if args.images is None:
        args.images = CUDA_IMAGES if cuda else CPU_IMAGES
    if args.epochs is None:
        args.epochs = CUDA_EPOCHS if cuda else CPU_EPOCHS
    if args.no_processes:
        args.process_ks = []
    elif args.process_ks is None:
        args.process_ks = [k for k in args.ks if k <= CUDA_PROCESS_MAX_K] if cuda else list(args.ks)
    elif set(args.process_ks) - set(args.ks):
        p.error(f"--process-ks: {sorted(set(args.process_ks) - set(args.ks))} not among --ks {args.ks}")
    check_args(
        p,
        {"--images": (args.images, 16), "--batch-size": (args.batch_size, 1), "--epochs": (args.epochs, 1)},
        args.depth,
    )
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from bench.packing import cores, mps_seen
    from bench.table import emit, machine

    began = time.perf_counter()
    device, cuda = args.device, args.device.type == "cuda"
    where = machine(str(device))
    print(
        f"ResNet-{'/'.join(map(str, args.depth))}, {args.images:,} images per member, batch {args.batch_size}, "
        f"1 warm-up + {args.epochs} timed epoch(s), arrays of K = {', '.join(map(str, args.ks))}, "
        f"processes K = {', '.join(map(str, args.process_ks)) or 'none'} on {device} ({cores()} cores)",
        flush=True,
    )
    if cuda and mps_seen() and args.process_ks:
        print("note: a CUDA MPS pipe directory exists; if its daemon runs, the processes ran with MPS", flush=True)
    _load_note("at the start")
    for depth in args.depth:
        t0 = time.perf_counter()
        arrays, speed = in_process(depth, args)
        t1 = time.perf_counter()
        procs = processes(depth, args)
        print(
            f"  ResNet-{depth}: {t1 - t0:.1f} s in process, {time.perf_counter() - t1:.1f} s of processes", flush=True
        )
        title = (
            f"ResNet-{depth} ({speed}), {args.images:,} images/member, batch {args.batch_size}, "
            f"{args.epochs} timed epoch(s): an array of K trials vs one trial alone vs K processes: {where}"
        )
        emit(title, COLUMNS, table_rows(depth, arrays, procs), args.out, argv, NAME)
        print(flush=True)
        _load_note(f"after ResNet-{depth}")
    print(f"elapsed {time.perf_counter() - began:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main(sys.argv[1:]))
