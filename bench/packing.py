"""K training processes sharing one device vs one alone: aggregate images/s.

    python bench packing                       K = 1, 2, 4, 8 ResNet-20 trainings on one GPU
    python bench packing --device cpu --ks 1,2

What it measures. For each K the parent starts K independent processes (multiprocessing, "spawn"
context: each one a fresh interpreter with its own CUDA context, nothing shared but the device).
Each builds its own ``resnet_core.train.Trainer`` (its own synthetic images, ResNet model,
optimizer) and trains one untimed warm-up epoch (CUDA context, cuDNN autotuning, allocator). Then
all K wait on one barrier, and on its release each trains the same number of timed epochs with
the trainer's own epoch loop (``Trainer._train_epoch``, device synchronised at both ends) and
reports its start and end wall-clock times. The aggregate images/s of K is
``sum of images trained by all K / (latest end - earliest start)``, so a straggler counts
against it; per-process images/s is each one's images over its own timed span. "vs one alone"
is the aggregate over that of K = 1 (always measured, first) in this same run. Sets of K run one
after another, never overlapping.

This is what Ray Tune does with fractional GPUs (``resources_per_trial={"gpu": 1/K}``): K trials'
processes share one card by time-slicing. A small model such as ResNet-20 on CIFAR-sized images
leaves a modern GPU mostly idle (kernel launches, not arithmetic, bound one process), so packing
trials fills the gaps. The target on an H100/H200: 4 packed trials >= 2x the aggregate images/s of
one alone.

Threads. On CPU each process gets ``torch.set_num_threads(max(1, cores // K))``: the cores are
split between the trials, which is what Ray does with ``cpu: cores/K`` per trial. On a machine
with few cores packing cannot win on CPU (the cores are already busy); the CPU numbers are there
to check the benchmark, not to recommend packing on CPU. On CUDA each process keeps
``max(1, min(2, cores // K))`` threads: the work is on the GPU and the host only launches kernels.

CUDA MPS. Without MPS, kernels of different processes never run at the same time on the GPU, they
take turns in time slices; NVIDIA's Multi-Process Service (``nvidia-cuda-mps-control -d``, started
by the machine's administrator, with exclusive-process compute mode for best effect) lets them run
concurrently and can raise packed throughput further. It is a user's (or cluster admin's) option:
this benchmark never starts MPS nor changes any GPU setting; it measures the GPU as it finds it
(it prints a note when it sees an MPS pipe directory).

GPU memory is each process's peak ``torch.cuda.max_memory_allocated`` (the largest of the K),
tensors only: each process's CUDA context (a few hundred MiB) comes on top.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import time
import traceback
from pathlib import Path

NAME = "packing"
SEED = 0
HELD_OUT = 16  # val images split off by load_splits; never looked at here
SMOKE_TEST = {"ks": [1, 2], "depth": 8, "images": 256, "batch_size": 64, "epochs": 1}
# Default sizes, chosen so the whole default GPU run (K = 1, 2, 4, 8) takes about a minute on an
# H100: 15 processes x (1 warm-up + 2 timed) epochs x 20k images = 900k images at about 25-60k
# images/s aggregate (~25 s of training) plus process start-up, CUDA init and data per set of K.
CUDA_IMAGES, CPU_IMAGES = 20_000, 1024
CUDA_EPOCHS, CPU_EPOCHS = 2, 1
START_TIMEOUT_S = 600  # a process that has not reached the barrier by then is taken as stuck


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_process(k: int, cuda: bool) -> int:
    share = max(1, cores() // k)
    return max(1, min(2, share)) if cuda else share


# --- one training process ------------------------------------------------------------------------
def _worker(rank: int, settings: dict, barrier, results) -> None:
    """One trial: build a Trainer, warm up, wait on the barrier, train the timed epochs, report."""
    try:
        import torch

        torch.set_num_threads(settings["threads"])
        from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
        from resnet_core.train import Trainer

        data = DataConfig(
            name="synthetic",
            synthetic_size=settings["images"] + HELD_OUT,
            val_size=HELD_OUT,
            image_size=32,
            augment=True,
            normalize="channel",
        )
        train = TrainConfig(
            epochs=1 + settings["epochs"],  # the warm-up epoch + the timed ones: one lr schedule
            batch_size=settings["batch_size"],
            precision=settings["precision"],
            seed=SEED + rank,
            device=settings["device"],
        )
        trainer = Trainer(RunConfig(model=ModelConfig(depth=settings["depth"]), dataset=data, train=train))
        cuda = trainer.device.type == "cuda"
        images = len(trainer.splits.train_x)

        def epoch() -> None:
            if trainer._train_epoch() is None:
                raise RuntimeError(f"process {rank}: the training loss stopped being finite")

        epoch()  # untimed warm-up
        if cuda:
            torch.cuda.synchronize(trainer.device)
        barrier.wait(timeout=START_TIMEOUT_S)
        start = time.time()  # wall clock: comparable between processes
        for _ in range(settings["epochs"]):
            epoch()  # synchronises the device at its end
        end = time.time()
        results.put(
            (
                rank,
                "ok",
                {
                    "images": images * settings["epochs"],
                    "start": start,
                    "end": end,
                    "memory": torch.cuda.max_memory_allocated(trainer.device) if cuda else None,
                    "speed": str(trainer.speed),
                    "train_images": images,
                },
            )
        )
    except BaseException:
        barrier.abort()  # the others must not wait for this one
        results.put((rank, "error", traceback.format_exc()))


def run_packed(k: int, settings: dict) -> list[dict]:
    """Start K processes, wait for all their reports, return them (raises if one failed)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(rank, settings, barrier, results), daemon=True) for rank in range(k)]
    for p in procs:
        p.start()
    reports: dict[int, dict] = {}
    try:
        while len(reports) < k:
            try:
                rank, status, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"K={k}: a training process exited with code {dead[0].exitcode}") from None
                continue
            if status != "ok":
                raise RuntimeError(f"K={k}, process {rank} failed:\n{payload}")
            reports[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=30)
        for p in procs:  # only on failure: these are this run's own children
            if p.is_alive():
                p.terminate()
                p.join()
    return [reports[rank] for rank in range(k)]


# --- the table -----------------------------------------------------------------------------------
def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def summarize(k: int, reports: list[dict], threads: int) -> dict:
    images = sum(r["images"] for r in reports)
    span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    per_process = [r["images"] / (r["end"] - r["start"]) for r in reports]
    memory = [r["memory"] for r in reports if r["memory"] is not None]
    return {
        "k": k,
        "threads": threads,
        "per_process": sum(per_process) / len(per_process),
        "aggregate": images / span,
        "span": span,
        "memory": max(memory) if memory else None,
    }


def table_rows(rows: list[dict], cuda: bool) -> list[tuple[str, ...]]:
    base = rows[0]["aggregate"]
    cells = []
    for r in rows:
        row = (
            str(r["k"]),
            str(r["threads"]),
            f"{r['per_process']:,.0f}",
            f"{r['aggregate']:,.0f}",
            f"{r['aggregate'] / base:.2f}x",
            f"{r['span']:.1f}",
        )
        cells.append(row + ((gib(r["memory"]),) if cuda else ()))
    return cells


# --- entry point ---------------------------------------------------------------------------------
def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give K values like 1,2,4,8") from None
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"{text!r}: each K must be at least 1")
    return sorted(set(ks))


def parse_args(argv: list[str]) -> argparse.Namespace:
    from bench.table import check_args, parse_with_smoke_test
    from resnet_core.config import PRECISIONS
    from resnet_core.errors import ConfigError

    p = argparse.ArgumentParser(
        prog=f"python bench {NAME}",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ks",
        type=parse_ks,
        default=[1, 2, 4, 8],
        help="numbers of processes sharing the device, comma-separated (default 1,2,4,8; 1 is always run)",
    )
    p.add_argument("--depth", type=int, default=20, help="CIFAR ResNet depth, 6n+2 (default 20)")
    p.add_argument(
        "--images", type=int, help=f"training images per process (default {CUDA_IMAGES} on CUDA, {CPU_IMAGES} on CPU)"
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
        help="the trainer's precision (default auto: bf16 on CUDA where supported, fp32 elsewhere)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    args = parse_with_smoke_test(p, argv, SMOKE_TEST, "a tiny run (K = 1, 2; ResNet-8) that checks the benchmark works")

    from resnet_core.train import resolve_device  # imports torch

    try:
        args.device = resolve_device(args.device)
    except (ConfigError, RuntimeError) as err:
        p.error(f"--device: {err}")
    cuda = args.device.type == "cuda"
    if args.images is None:
        args.images = CUDA_IMAGES if cuda else CPU_IMAGES
    if args.epochs is None:
        args.epochs = CUDA_EPOCHS if cuda else CPU_EPOCHS
    check_args(
        p,
        {"--images": (args.images, 16), "--batch-size": (args.batch_size, 1), "--epochs": (args.epochs, 1)},
        [args.depth],
    )
    if 1 not in args.ks:
        args.ks = [1, *args.ks]
    return args


def mps_seen() -> bool:
    """Whether a CUDA MPS control daemon's pipe directory exists (looked at, never started)."""
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")).is_dir()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from bench.table import emit, machine
    from resnet_core.config import ModelConfig

    began = time.perf_counter()
    device, cuda = args.device, args.device.type == "cuda"
    print(
        f"{ModelConfig(depth=args.depth).name}, {args.images:,} images per process, batch {args.batch_size}, "
        f"1 warm-up + {args.epochs} timed epoch(s), K = {', '.join(map(str, args.ks))} on {device} "
        f"({cores()} cores)",
        flush=True,
    )
    rows, speed = [], "?"
    for k in args.ks:
        threads = threads_per_process(k, cuda)
        settings = {
            "images": args.images,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "depth": args.depth,
            "precision": args.precision,
            "device": str(device),
            "threads": threads,
        }
        t0 = time.perf_counter()
        reports = run_packed(k, settings)
        speed = reports[0]["speed"]
        row = summarize(k, reports, threads)
        rows.append(row)
        print(
            f"  K={k}: {row['aggregate']:,.0f} images/s aggregate over {row['span']:.1f} s timed "
            f"({time.perf_counter() - t0:.1f} s with start-up and warm-up)",
            flush=True,
        )

    columns = ("K", "threads/process", "images/s per process", "aggregate images/s", "vs one alone", "timed s")
    if cuda:
        columns += ("peak GPU memory/process",)
    if cuda and mps_seen():
        print("note: a CUDA MPS pipe directory exists; if its daemon runs, these numbers are with MPS", flush=True)
    title = (
        f"{ModelConfig(depth=args.depth).name} ({speed}), {args.images:,} images/process, batch {args.batch_size}, "
        f"{args.epochs} timed epoch(s), K processes sharing one device: {machine(str(device))}"
    )
    emit(title, columns, table_rows(rows, cuda), args.out, argv, NAME)
    print(f"\nelapsed {time.perf_counter() - began:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main(sys.argv[1:]))
