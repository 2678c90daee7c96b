"""The words shared by the trainable, the driver's callbacks, MLflow, `status` and `report`:
result keys, MLflow tags and the rule that names how a trial ended. Ray-free, so `plan`,
`status` and `report` import it without starting Ray."""

from __future__ import annotations

import re

from resnet_core import metrics as M
from resnet_core.metrics import Status

__all__ = [
    "ARRAY",
    "ARRAY_BEST",
    "DEVICE",
    "EARLIER_EPOCHS",
    "FINAL_STATUSES",
    "HOSTNAME",
    "LAYER_RESPONSES",
    "MEMBERS",
    "NODE_ID",
    "NOTICE",
    "PARENT_TAG",
    "REPLAYED",
    "REPORT_FOLDER",
    "SPEED",
    "STATUS",
    "TAG_BEST_EPOCH",
    "TAG_DEVICE",
    "TAG_ERROR",
    "TAG_HOST",
    "TAG_NODES",
    "TAG_NODE_ID",
    "TAG_OVERRIDES",
    "TAG_RETIRED",
    "TAG_ROLE",
    "TAG_SPEED",
    "TAG_STATUS",
    "TAG_STOPPED_AT",
    "TAG_STORAGE",
    "TAG_SWEEP",
    "TAG_TRIAL_ID",
    "describe_status",
    "error_line",
    "final_status",
]

# --- result keys (a trial's reports to Tune, besides resnet_core.metrics) ----------------------
STATUS = "status"  # the trial's status so far (resnet_core.metrics.Status)
LAYER_RESPONSES = "layer_response_std"
EARLIER_EPOCHS = "earlier_epochs"  # after a restore, the epochs trained before it
REPLAYED = "replayed"  # a finished trial's last result, reported again after a restore
NODE_ID = "node_id"  # where the trial ran (the Ray node id, and its host name)
HOSTNAME = "hostname"  # the same key Tune fills in itself
NOTICE = "notice"  # a line for the user (to stderr), sent once with the first result
DEVICE = "device"  # the trial's training device (cuda:0, cpu)
SPEED = "speed"  # its speed levers as resolved there (resnet_core.train.Speed)
# Trial arrays (resources.array): one Tune trial trains several trials, its members.
ARRAY = "array"  # an array trial's config: its members' flat configs, as JSON text
MEMBERS = "members"  # in an array trial's result: member index → that member's own result, as JSON text
ARRAY_BEST = "array_best"  # the member whose metrics an array trial reports as its own

# --- MLflow tags ------------------------------------------------------------------------------------
TAG_SWEEP = "resnet_sweep.sweep"  # on parent and children: the sweep's key
TAG_ROLE = "resnet_sweep.role"  # "sweep" | "trial"
TAG_TRIAL_ID = "resnet_sweep.trial_id"
TAG_DUPLICATE_OF = "resnet_sweep.duplicate_of"  # on a trial's second run (deleted): the run it was merged into
TAG_STATUS = "status"
TAG_BEST_EPOCH = "best_epoch"
TAG_STOPPED_AT = "stopped_at_epoch"
TAG_ERROR = "error"  # a failed trial's exception, one line (the whole trace: artifact error.txt)
TAG_NODE_ID, TAG_HOST = "node_id", "host"  # where the trial ran last
TAG_NODES = "nodes"  # every node it ran on, in order (more than one after a node loss)
TAG_DEVICE, TAG_SPEED = DEVICE, SPEED  # where it trained last, and how ("bf16 channels_last fused-sgd")
PARENT_TAG = "mlflow.parentRunId"
TAG_STORAGE = "resnet_sweep.storage"  # on the parent: the sweep's experiment folder
TAG_RETIRED = "resnet_sweep.retired"  # on a trial the sweep file no longer has (`run --extend`): "true"
TAG_OVERRIDES = "resnet_sweep.overrides"  # on the parent: the `--set KEY=VALUE`s it was run with (JSON list)
TAG_PREDICTED_WALL = "resnet_sweep.predicted_wall_s"  # on the parent: `plan --calibrate`'s prediction of `run`
TAG_WALL = "resnet_sweep.wall_s"  # on the parent: what `run` took, its start to its report (with a prediction)
# A failed trial may be retried on resume; these are never touched again.
FINAL_STATUSES = {str(Status.COMPLETED), str(Status.STOPPED_EARLY), str(Status.DIVERGED)}
REPORT_FOLDER = "report"  # the parent run's artifact folder holding the paper report


def error_line(trace: str | None) -> str:
    """The last line of an error's trace (the exception and its message), kept short."""
    lines = [line.strip() for line in (trace or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# torch.OutOfMemoryError (CUDA), Python's MemoryError, Ray's OutOfMemoryError (its memory monitor).
_OUT_OF_MEMORY = re.compile(r"\bOutOfMemoryError\b|^MemoryError\b", re.MULTILINE)


def final_status(last_result: dict | None, *, errored: bool, planned_epochs: int, error: str | None = None) -> Status:
    """How a finished trial ended, from its last reported result (and its error's trace): the
    one rule shared by the progress lines, the final table and the MLflow tags."""
    if errored:
        return Status.OUT_OF_MEMORY if _OUT_OF_MEMORY.search(error or "") else Status.FAILED
    result = last_result or {}
    if result.get(STATUS) == str(Status.DIVERGED):
        return Status.DIVERGED
    if result.get(STATUS) == str(Status.COMPLETED) or int(result.get(M.EPOCH, 0)) >= planned_epochs:
        return Status.COMPLETED
    return Status.STOPPED_EARLY


def describe_status(status: Status | str, epoch: int, stopped_by: str) -> str:
    """A status as the tables show it: an early stop or an interruption says at which epoch."""
    if str(status) == Status.STOPPED_EARLY:
        return f"stopped by {stopped_by} at epoch {epoch}"
    if str(status) == Status.INTERRUPTED:
        return f"interrupted at epoch {epoch}"
    return str(status)
