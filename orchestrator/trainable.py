"""The Tune function trainable: flat config → resnet_core's trainer, one report and one
checkpoint per epoch. It never talks to MLflow: the driver's callback does (tracking.py)."""
from __future__ import annotations

import io
import json
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from resnet_core import metrics as M
from resnet_core.metrics import Status
from resnet_core.train import RunConfig, Trainer

from . import storage
from .space import resolve_trial
from .vocabulary import DEVICE, EARLIER_EPOCHS, HOSTNAME, LAYER_RESPONSES, NODE_ID, NOTICE, REPLAYED, SPEED, STATUS

__all__ = ["CHECKPOINT_FILE", "error_trace", "train_trial"]

CHECKPOINT_FILE = "state.pt"
# Settings that say where a trial runs, not what it trains: a checkpoint may differ in them.
_WHERE_NOT_WHAT = frozenset({"dataset.cache_dir", "dataset.root", "dataset.workers", "train.device"})


def _checkpoint_index(folder: str) -> int:
    """Tune's checkpoint folders are checkpoint_000007: the number, or -1."""
    tail = folder.rstrip("/").rsplit("/", 1)[-1].removeprefix("checkpoint_")
    return int(tail) if tail.isdigit() else -1


def _tune_reader(checkpoint) -> Callable[[], bytes | None]:
    def read() -> bytes | None:
        with checkpoint.as_directory() as folder:
            path = Path(folder) / CHECKPOINT_FILE
            return path.read_bytes() if path.is_file() else None
    return read


class _Unusable(Exception):
    """A checkpoint that is not a state for this trial (the message says why)."""


def _checked_state(data: bytes | None, trainer: Trainer) -> dict:
    """The trainer state in ``data``, or an exception saying why it is not one for this trial."""
    if not data:
        raise _Unusable("missing" if data is None else "empty file")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise _Unusable(f"not a trainer state ({type(state).__name__} without a config)")
    saved, ours = state["config"], trainer.cfg.to_flat()
    for key, value in ours.items():
        if key in saved and key not in _WHERE_NOT_WHAT and saved[key] != value:
            raise _Unusable(f"another trial's state: {key} {saved[key]!r}, this trial's {value!r}")
    epoch = state.get("epoch")
    if not isinstance(epoch, int) or not 0 <= epoch <= trainer.epochs:
        raise _Unusable(f"epoch {epoch!r} is not in 0…{trainer.epochs}")
    return state


def _reason(err: Exception) -> str:
    """Why a checkpoint was passed over, in a few words on one line."""
    if isinstance(err, _Unusable):
        return str(err)
    if isinstance(err, KeyError):
        return f"not a trainer state (no {err})"
    if str(err).startswith("Weights only load failed") and err.__context__ is not None:
        err = err.__context__  # torch's advice to load without weights_only does not apply to a corrupt file
    text = " ".join(str(err).split()).split(". ")[0]  # the first sentence: torch goes on with advice
    return f"{type(err).__name__}: {text[:200]}{'…' if len(text) > 200 else ''}" if text else type(err).__name__


def _restore(trainer: Trainer, trial_uri: str, checkpoint) -> tuple[Trainer, str | None]:
    """Loads the trial's newest usable checkpoint into ``trainer``: the trainer to go on with
    (a fresh one after a state that failed halfway in) and a warning line when a checkpoint had
    to be passed over (None otherwise).

    The candidates are the checkpoint Tune restores (``checkpoint``, named by its experiment
    state) and every checkpoint_* folder of the trial in storage, newest (highest number) first:
    - With remote storage the driver uploads its experiment state in the background: a driver
      killed between a trial's upload of a checkpoint and its own upload of the state leaves
      newer checkpoints (even a finished trial's last) that Tune does not know of, and the
      trial would train those epochs again. No Tune option covers this.
    - A checkpoint file cut short (a dying worker or node, a full disk) or otherwise corrupt, or
      a state that is not this trial's (another model or recipe), would make the trial fail on
      every retry from it: it is passed over for the next older one, or the trial starts again
      from epoch 0 (deterministic, so the same numbers; MLflow skips epochs it already has)."""
    candidates: dict[int, tuple[str, Callable[[], bytes | None]]] = {
        _checkpoint_index(folder): (folder, lambda folder=folder: storage.read_bytes(folder, CHECKPOINT_FILE))
        for folder in storage.subfolders(trial_uri, "checkpoint_") if _checkpoint_index(folder) >= 0
    }
    if checkpoint is not None:  # read as Tune gives it (it may lie elsewhere than the listing)
        candidates[_checkpoint_index(checkpoint.path)] = (checkpoint.path, _tune_reader(checkpoint))
    passed_over, used = [], None
    for index in sorted(candidates, reverse=True):
        folder, read = candidates[index]
        name = f"{folder.rstrip('/').rsplit('/', 1)[-1]}/{CHECKPOINT_FILE}"
        try:
            state = _checked_state(read(), trainer)
        except Exception as err:  # noqa: BLE001 — whatever is wrong with it, it is passed over
            passed_over.append(f"{name} ({_reason(err)})")
            continue
        try:
            trainer.load_state_dict(state)
        except Exception as err:  # noqa: BLE001 — e.g. shapes of another model: start clean
            trainer = Trainer(trainer.cfg, splits=trainer.splits)
            passed_over.append(f"{name} ({_reason(err)})")
            continue
        used = name.split("/", 1)[0]
        break
    if not passed_over:
        return trainer, None
    then = f"continuing from epoch {trainer.epoch} of {used}" if used else "restarting from epoch 0"
    return trainer, f"warning: trial {trial_uri}: cannot restore {', '.join(passed_over)}; {then}"


def train_trial(config: dict[str, Any], experiment_path: str) -> None:
    import ray
    from ray import tune

    context = ray.get_runtime_context()
    cpus = context.get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    placement = {NODE_ID: context.get_node_id(), HOSTNAME: socket.gethostname()}
    trainer = Trainer(RunConfig.from_flat(resolve_trial(config, {})))
    placement.update({DEVICE: str(trainer.device), SPEED: str(trainer.speed)})
    trial_uri = storage.join(experiment_path, Path(tune.get_context().get_trial_dir()).name)
    trainer, warning = _restore(trainer, trial_uri, tune.get_checkpoint())
    # The epochs before the restore go with the first result, once: the driver logs any that
    # it had not (it may have died before they reached it), so MLflow keeps epochs 1…N.
    # (As JSON text: one flat value in Tune's result.json and progress lines.)
    # So does a warning about the restore: the driver prints it (a trial's own output stays in
    # its worker's log) and Tune keeps it in the trial's results.
    once = {EARLIER_EPOCHS: json.dumps(trainer.history)} if trainer.history else {}
    if warning:
        once[NOTICE] = warning

    def report(r) -> None:
        result = {**r.metrics, **placement, **once}
        once.clear()
        last = r.epoch == r.epochs
        result[STATUS] = str(Status.COMPLETED if last else Status.RUNNING)
        if last:
            result.update(trainer.final_metrics(), **{LAYER_RESPONSES: trainer.layer_response_std()})
        with tempfile.TemporaryDirectory() as folder:
            torch.save(r.checkpoint(), Path(folder) / CHECKPOINT_FILE)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))

    if trainer.history and trainer.epoch >= trainer.epochs:
        # Restored from its final checkpoint (the driver died before recording the end): say
        # the trial is complete again without training or checkpointing anything.
        # (No node: this one trained nothing; the node that did is in the earlier results.)
        tune.report({**trainer.history[-1], **once, REPLAYED: True, STATUS: str(Status.COMPLETED),
                     **trainer.final_metrics(), LAYER_RESPONSES: trainer.layer_response_std()})
        return
    trainer.run(report)
    if trainer.status == Status.DIVERGED:
        # A diverged trial is the worst possible result for the searcher and scheduler, not a crash.
        tune.report({M.EPOCH: trainer.epoch + 1, M.VAL_ERROR: 1.0, M.TRAIN_ERROR: 1.0, **placement, **once,
                     STATUS: str(Status.DIVERGED)})


def error_trace(trial) -> str:
    """A failed Tune trial's error trace, as soon as Tune has it: in the driver's staging folder
    before it is synced to storage (where Trial.get_error reads it)."""
    name = trial.run_metadata.error_filename
    local = Path(trial.local_path or "", name or "")
    trace = local.read_text(errors="replace") if name and local.is_file() else trial.get_error() or ""
    return re.sub(r"\x1b\[[0-9;]*m", "", trace)  # Ray colours the task's name
