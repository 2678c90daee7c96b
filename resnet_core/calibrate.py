"""How fast a trial trains and evaluates here, measured rather than assumed (`resnet-sweep plan
--calibrate`): the trial's own trainer — its data pipeline, device, precision, memory layout and
SGD as they resolve on this machine, with the trial's threads — times a few warm-up steps, then up
to tens of training steps, a pass of evaluation and one checkpoint. An array of trials is timed as
the fused model it trains as (``ArrayTrainer``).

Knows nothing of sweeps: the orchestrator turns the rates into a sweep's wall time."""

from __future__ import annotations

import io
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .array import ArrayTrainer
from .config import RunConfig
from .data import Splits, load_splits
from .train import Trainer

__all__ = ["Rate", "measure_rates"]

WARMUP_STEPS = 2  # untimed: allocation, kernel choice (oneDNN, cuDNN), compilation
STEPS = 20  # timed training steps, at most (and at most an epoch's)
STEP_SECONDS = 1.0  # …or fewer: about as many as take this long (at least MIN_STEPS)
MIN_STEPS = 3
CHUNKS = 3
# Evaluated images timed: the first of val (then test) in the trial's eval batches, the last batch
# cut to fit. On a CPU an image costs about the same in any batch; a GPU is timed on whole batches.
EVAL_IMAGES = {"cpu": 256, "cuda": 4_096}


@dataclass(frozen=True)
class Rate:
    """What one trial (or array of trials) costs on this machine, as measured."""

    device: str  # as it resolved: cpu, cuda:0, …
    speed: str  # the levers as they resolved (Speed): "fp32 fused-sgd", "bf16 channels_last fused-sgd"
    threads: int  # torch's CPU threads while measured: the trial's
    members: int  # trials in the measured model: 1, or an array's K
    setup_s: float  # the data loaded, the trainer built, and the warm-up's time beyond its steps'
    train_s_per_image: float  # seconds per training image of a step (an array's step trains it in every member)
    eval_s_per_image: float  # seconds per evaluated image (every member's, for an array)
    checkpoint_s: float  # the trainer's state taken and saved once, as a trial does after every epoch
    steps: int  # training steps timed
    eval_images: int  # images timed in evaluation

    def to_dict(self) -> dict:
        return asdict(self)


def measure_rates(groups: Sequence[Sequence[RunConfig]], *, threads: int) -> list[Rate]:
    """The Rate of each group: one run (a trial) or several of one shape (an array of trials).
    In-memory data is loaded once per dataset (each load timed and counted in the setup of every
    group that uses it, as each trial loads its own); torch runs with ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    loaded: dict[object, tuple[Splits, float]] = {}
    try:
        rates = []
        for cfgs in groups:
            data = cfgs[0].dataset
            if data.from_folder:
                splits, load_s = None, 0.0  # streamed by the trainer's loaders: read in its build
            else:
                if data not in loaded:
                    # Timed the second time: the first imports the data's reader and fills the
                    # file cache, which a trial's worker has done by its second trial.
                    load_splits(data)
                    start = time.perf_counter()
                    loaded[data] = (load_splits(data), time.perf_counter() - start)
                splits, load_s = loaded[data]
            rates.append(_measure(list(cfgs), splits, load_s, threads))
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()  # the next model's trainer starts with the memory a trial would
        return rates
    finally:
        torch.set_num_threads(before)


def _measure(cfgs: list[RunConfig], splits: Splits | None, load_s: float, threads: int) -> Rate:
    start = time.perf_counter()
    trainer = Trainer(cfgs[0], splits=splits) if len(cfgs) == 1 else ArrayTrainer(cfgs, splits=splits)
    build_s = time.perf_counter() - start
    device = trainer.device
    batch = cfgs[0].train.batch_size

    warmup_s, _ = _timed(device, trainer.train_steps, WARMUP_STEPS)
    # As many steps as STEP_SECONDS hold at the warm-up's pace (slower than the steady one), in
    # CHUNKS runs of the loader: the median chunk's pace stands, so a burst of load from other
    # work on the machine during one chunk does not.
    steps = max(MIN_STEPS, min(STEPS, int(STEP_SECONDS * WARMUP_STEPS / max(warmup_s, 1e-9))))
    paces, timed_steps = [], 0
    for chunk in _split(steps, CHUNKS):
        seconds, images = _timed(device, trainer.train_steps, chunk)
        paces.append(seconds / images)
        timed_steps += math.ceil(images / batch)  # an epoch shorter than the chunk ends it early
    train_s_per_image = statistics.median(paces)

    trainer.evaluate(_First(_eval_batches(trainer), batch))  # warm-up
    evaluated = _First(_eval_batches(trainer), EVAL_IMAGES.get(device.type, EVAL_IMAGES["cuda"]))
    eval_s, _ = _timed(device, trainer.evaluate, evaluated)
    checkpoint_s, _ = _timed(device, lambda: torch.save(trainer.state_dict(), io.BytesIO()))
    return Rate(
        device=str(device),
        speed=str(trainer.speed),
        threads=threads,
        members=len(cfgs),
        setup_s=load_s + build_s + max(0.0, warmup_s - WARMUP_STEPS * batch * train_s_per_image),
        train_s_per_image=train_s_per_image,
        eval_s_per_image=eval_s / max(evaluated.count, 1),
        checkpoint_s=checkpoint_s,
        steps=timed_steps,
        eval_images=evaluated.count,
    )


def _split(steps: int, parts: int) -> list[int]:
    """``steps`` in ``parts`` near-equal chunks."""
    return [steps // parts + (i < steps % parts) for i in range(parts)]


def _eval_batches(trainer: Trainer | ArrayTrainer) -> Iterable:
    """What a trial evaluates after every epoch: val, then test."""
    return itertools.chain(trainer.val_loader, trainer.test_loader)


class _First:
    """The first ``limit`` images of ``batches``, the last batch cut to fit; ``count``: how many."""

    def __init__(self, batches: Iterable, limit: int) -> None:
        self.batches, self.limit, self.count = batches, limit, 0

    def __iter__(self) -> Iterator:
        for x, y in self.batches:
            take = min(len(y), self.limit - self.count)
            self.count += take
            yield x[:take], y[:take]
            if self.count >= self.limit:
                return


def _timed(device: torch.device, work: Callable, *args) -> tuple[float, Any]:
    """(seconds ``work(*args)`` takes, the device's queue drained at both ends; what it returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = work(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result
