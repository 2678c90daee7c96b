"""Names shared by the trainer, the Tune trainable, MLflow and the report: define them once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from operator import itemgetter
from typing import Any, TypeVar

__all__ = ["EPOCH", "FINAL_METRICS", "ITERATION", "METRICS", "Status", "best_epoch", "run_result"]

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


# best_epoch's order as one number, for a store that keeps "the best" by a single score and keeps
# the later of two equal ones (Tune's checkpoints): the epoch adds less than any difference in
# val error can be (1 / the val images, over 1e-7 for any real data set), so lower val error
# still wins, and on a tie the earlier epoch.
BEST_EPOCH_RANK = "best_epoch_rank"
_EPOCH_WEIGHT = 1e-13


def best_epoch_rank(record: dict[str, Any]) -> float:
    """A number that is lowest for the epoch best_epoch chooses among ``record``s."""
    return float(record[VAL_ERROR]) + _EPOCH_WEIGHT * int(record[EPOCH])


def run_result(
    *,
    status: Status,
    name: str,
    epochs: int,
    history: list[dict[str, float]],
    layer_response_std: list[float],
    final: dict[str, float],
    params: int,
    device: str,
    speed: str,
    config: dict[str, Any],
) -> dict[str, Any]:
    """One run's result, the same for a trainer and an array member: the errors are the best
    epoch's (best_epoch), ``final`` holds the final model's metrics (FINAL_METRICS)."""
    best = best_epoch(history)
    # Steady-state speed: the first epoch (warm-up, compilation) is left out when possible.
    speeds = [h[IMAGES_PER_SECOND] for h in history[1:]] or [h[IMAGES_PER_SECOND] for h in history]
    return {
        "status": str(status),
        "name": name,
        "epochs": epochs,
        "epochs_run": len(history),
        "best_epoch": best[EPOCH] if best else None,
        TRAIN_ERROR: best[TRAIN_ERROR] if best else None,
        VAL_ERROR: best[VAL_ERROR] if best else None,
        TEST_ERROR: best[TEST_ERROR] if best else None,
        "final_train_error": history[-1][TRAIN_ERROR] if history else None,
        IMAGES_PER_SECOND: sum(speeds) / len(speeds) if speeds else None,
        "layer_response_std": layer_response_std,
        **final,  # the final model's, where the errors above are the best epoch's
        "params": params,
        "device": device,
        "speed": speed,
        "config": config,
        "history": history,
    }
