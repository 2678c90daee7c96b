"""The Tune function trainable: flat config → resnet_core's trainer, one report and one
checkpoint per epoch. It never talks to MLflow: the driver's callback does (tracking.py)."""
from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

import torch

from resnet_core import metrics as M
from resnet_core.metrics import Status
from resnet_core.train import RunConfig, Trainer

from .space import resolve_trial

__all__ = ["CHECKPOINT_FILE", "HOSTNAME", "LAYER_RESPONSES", "NODE_ID", "STATUS", "train_trial"]

CHECKPOINT_FILE = "state.pt"
STATUS = "status"  # result key: the trial's status so far (resnet_core.metrics.Status)
LAYER_RESPONSES = "layer_response_std"
NODE_ID = "node_id"  # result keys: where the trial ran (the Ray node id, and its host name)
HOSTNAME = "hostname"  # the same key Tune fills in itself


def train_trial(config: dict[str, Any]) -> None:
    import ray
    from ray import tune

    context = ray.get_runtime_context()
    cpus = context.get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    placement = {NODE_ID: context.get_node_id(), HOSTNAME: socket.gethostname()}
    trainer = Trainer(RunConfig.from_flat(resolve_trial(config, {})))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_state_dict(torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True))

    def report(r) -> None:
        result = {**r.metrics, **placement}
        last = r.epoch == r.epochs
        result[STATUS] = str(Status.COMPLETED if last else Status.RUNNING)
        if last:
            result[LAYER_RESPONSES] = trainer.layer_response_std()
        with tempfile.TemporaryDirectory() as folder:
            torch.save(r.checkpoint(), Path(folder) / CHECKPOINT_FILE)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))

    if trainer.history and trainer.epoch >= trainer.epochs:
        # Restored from its final checkpoint (the driver died before recording the end): say
        # the trial is complete again without training or checkpointing anything.
        tune.report({**trainer.history[-1], **placement, STATUS: str(Status.COMPLETED),
                     LAYER_RESPONSES: trainer.layer_response_std()})
        return
    trainer.run(report)
    if trainer.status == Status.DIVERGED:
        # A diverged trial is the worst possible result for the searcher and scheduler, not a crash.
        tune.report({M.EPOCH: trainer.epoch + 1, M.VAL_ERROR: 1.0, M.TRAIN_ERROR: 1.0, **placement,
                     STATUS: str(Status.DIVERGED)})


def final_status(last_result: dict | None, *, errored: bool, planned_epochs: int) -> Status:
    """How a finished trial ended, from its last reported result: the one rule shared by the
    progress lines, the final table and the MLflow tags."""
    if errored:
        return Status.FAILED
    result = last_result or {}
    if result.get(STATUS) == str(Status.DIVERGED):
        return Status.DIVERGED
    if result.get(STATUS) == str(Status.COMPLETED) or int(result.get(M.EPOCH, 0)) >= planned_epochs:
        return Status.COMPLETED
    return Status.STOPPED_EARLY
