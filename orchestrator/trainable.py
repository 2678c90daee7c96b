"""The Tune function trainable: flat config → resnet_core's trainer, one report and one
checkpoint per epoch. It never talks to MLflow: the driver's callback does (tracking.py)."""
from __future__ import annotations

import io
import json
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch

from resnet_core import metrics as M
from resnet_core.metrics import Status
from resnet_core.train import RunConfig, Trainer

from . import storage
from .space import resolve_trial

__all__ = ["CHECKPOINT_FILE", "EARLIER_EPOCHS", "HOSTNAME", "LAYER_RESPONSES", "NODE_ID", "REPLAYED", "STATUS", "train_trial"]

CHECKPOINT_FILE = "state.pt"
STATUS = "status"  # result key: the trial's status so far (resnet_core.metrics.Status)
LAYER_RESPONSES = "layer_response_std"
EARLIER_EPOCHS = "earlier_epochs"  # result key: after a restore, the epochs trained before it
REPLAYED = "replayed"  # result key: a finished trial's last result, reported again after a restore
NODE_ID = "node_id"  # result keys: where the trial ran (the Ray node id, and its host name)
HOSTNAME = "hostname"  # the same key Tune fills in itself


def _checkpoint_index(folder: str) -> int:
    """Tune's checkpoint folders are checkpoint_000007: the number, or -1."""
    tail = folder.rstrip("/").rsplit("/", 1)[-1].removeprefix("checkpoint_")
    return int(tail) if tail.isdigit() else -1


def _newest_stored_state(trial_uri: str, current: dict | None, current_index: int) -> dict | None:
    """The trial's newest complete checkpoint in storage, when newer than the one Tune restores.

    Tune restores a trial from the checkpoint its experiment state names. With remote storage
    the driver uploads that state in the background: a driver killed between a trial's upload
    of a checkpoint and its own upload of the state leaves newer checkpoints (even a finished
    trial's last) that Tune does not know of, and the trial would train those epochs again.
    No Tune option covers this, so the trial looks for itself."""
    best = current
    for folder in storage.subfolders(trial_uri, "checkpoint_"):
        if _checkpoint_index(folder) <= current_index:  # Tune numbers them in order: not newer
            continue
        data = storage.read_bytes(folder, CHECKPOINT_FILE)
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True) if data else None
        except Exception:  # noqa: BLE001 — a checkpoint cut short by a dying worker: skip it
            state = None
        if state and (best is None or state["epoch"] > best["epoch"]):
            best = state
    return best


def train_trial(config: dict[str, Any], experiment_path: str) -> None:
    import ray
    from ray import tune

    context = ray.get_runtime_context()
    cpus = context.get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    placement = {NODE_ID: context.get_node_id(), HOSTNAME: socket.gethostname()}
    trainer = Trainer(RunConfig.from_flat(resolve_trial(config, {})))
    checkpoint, state, index = tune.get_checkpoint(), None, -1
    if checkpoint is not None:
        index = _checkpoint_index(checkpoint.path)
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)
    trial_uri = storage.join(experiment_path, Path(tune.get_context().get_trial_dir()).name)
    state = _newest_stored_state(trial_uri, state, index)
    if state is not None:
        trainer.load_state_dict(state)
    # The epochs before the restore go with the first result, once: the driver logs any that
    # it had not (it may have died before they reached it), so MLflow keeps epochs 1…N.
    # (As JSON text: Tune's TensorBoard logger warns about lists of dicts and skips text.)
    earlier = {EARLIER_EPOCHS: json.dumps(trainer.history)} if trainer.history else {}

    def report(r) -> None:
        result = {**r.metrics, **placement, **earlier}
        earlier.clear()
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
        # (No node: this one trained nothing; the node that did is in the earlier results.)
        tune.report({**trainer.history[-1], **earlier, REPLAYED: True, STATUS: str(Status.COMPLETED),
                     LAYER_RESPONSES: trainer.layer_response_std()})
        return
    trainer.run(report)
    if trainer.status == Status.DIVERGED:
        # A diverged trial is the worst possible result for the searcher and scheduler, not a crash.
        tune.report({M.EPOCH: trainer.epoch + 1, M.VAL_ERROR: 1.0, M.TRAIN_ERROR: 1.0, **placement, **earlier,
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
