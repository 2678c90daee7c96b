"""Names shared by the trainer, the Tune trainable, MLflow and the report: define them once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from operator import itemgetter
from typing import Any, TypeVar

__all__ = ["EPOCH", "FINAL_METRICS", "ITERATION", "METRICS", "Status", "best_epoch"]

T = TypeVar("T")

EPOCH = "epoch"
ITERATION = "iteration"  # optimizer steps taken by the end of the epoch (the x axis of 2015 Fig. 6)
TRAIN_LOSS = "train_loss"
TRAIN_ERROR = "train_error"
VAL_LOSS = "val_loss"
VAL_ERROR = "val_error"
TEST_ERROR = "test_error"
LR = "lr"
IMAGES_PER_SECOND = "images_per_second"
EPOCH_SECONDS = "epoch_seconds"

# Per-epoch metrics, in the order the progress table shows them. Errors are fractions in [0, 1].
METRICS = (ITERATION, TRAIN_LOSS, TRAIN_ERROR, VAL_LOSS, VAL_ERROR, TEST_ERROR, LR, IMAGES_PER_SECOND, EPOCH_SECONDS)

# Per-run metrics of the final model, measured once after the last epoch (logged at its step):
# 10-crop testing (2015 Table 3: top-1 and top-5), for image folders.
TEST_ERROR_10CROP = "test_error_10crop"
TEST_TOP5_ERROR_10CROP = "test_top5_error_10crop"
FINAL_METRICS = (TEST_ERROR_10CROP, TEST_TOP5_ERROR_10CROP)


class Status(str, Enum):
    """How a trial ended: the same words in the progress table, MLflow tags and the report."""

    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED_EARLY = "stopped_early"  # by the scheduler (ASHA)
    DIVERGED = "diverged"  # non-finite training loss
    FAILED = "failed"  # an exception
    OUT_OF_MEMORY = "out_of_memory"  # the trial ran out of (GPU or host) memory
    INTERRUPTED = "interrupted"  # the sweep was stopped (Ctrl-C) first; `resume` continues it

    def __str__(self) -> str:
        return self.value


def best_epoch(
    epochs: Iterable[T],
    val_error: Callable[[T], Any] = itemgetter(VAL_ERROR),
    epoch: Callable[[T], Any] = itemgetter(EPOCH),
) -> T | None:
    """The epoch with the lowest val error, the earliest on ties, or None: the model is chosen
    on the validation split, never on test (2015 §4.2 holds out 5k training images for this).
    The one rule for the trainer, the array, the table, MLflow and the report; ``epochs`` are
    history dicts by default, or anything ``val_error`` and ``epoch`` read (MLflow metrics)."""
    return min(epochs, key=lambda e: (val_error(e), epoch(e)), default=None)
