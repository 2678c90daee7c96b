"""The Tune function trainables: flat config → resnet_core's trainer (or an array of trials →
its ArrayTrainer, or a data-parallel trial → Ray Train's TorchTrainer running resnet_core's
trainer in each worker), one report and one checkpoint per epoch. They never talk to MLflow:
the driver's callback does (tracking.py)."""

from __future__ import annotations

import io
import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from orchestrator.persistence import storage
from orchestrator.running import ray_compat
from orchestrator.sweepfile.space import resolve_trial
from orchestrator.vocabulary import (
    ARRAY,
    ARRAY_BEST,
    DEVICE,
    EARLIER_EPOCHS,
    HOSTNAME,
    LAYER_RESPONSES,
    MEMBERS,
    NODE_ID,
    NOTICE,
    REPLAYED,
    SPEED,
    STATUS,
)
from resnet_core import metrics as M
from resnet_core.array import ArrayEpochReport, ArrayTrainer
from resnet_core.distributed import Shard
from resnet_core.metrics import Status
from resnet_core.train import RunConfig, Trainer

__all__ = ["CHECKPOINT_FILE", "error_trace", "train_array_trial", "train_data_parallel_trial", "train_trial"]

CHECKPOINT_FILE = "state.pt"
# Settings that say where a trial runs, not what it trains: a checkpoint may differ in them.
_WHERE_NOT_WHAT = frozenset({"dataset.cache_dir", "dataset.root", "dataset.workers", "train.device"})


def _checkpoint_index(folder: str) -> int:
    """Tune's checkpoint folders are checkpoint_000007: the number, or -1."""
    tail = folder.rstrip("/").rsplit("/", 1)[-1].removeprefix("checkpoint_")
    return int(tail) if tail.isdigit() else -1


class RestoreFromWhatIsThere:
    """A Tune trainable mixin (``__mixins__`` of the trial function; Tune's wrap_function puts it
    in the trainable's bases): a checkpoint that storage no longer holds is not Tune's to
    restore; the trial's own restore (``_restore``) then takes the newest one its folder holds.
    Tune deletes a trial's older checkpoint as soon as a newer one is saved, but uploads the
    experiment state naming the newer one later, in the background: a driver killed in between
    leaves a state that names a deleted checkpoint, and Tune's own restore would fail that trial
    on every resume."""

    def restore(self, checkpoint_path):
        import pyarrow.fs

        checkpoint = getattr(checkpoint_path, "checkpoint", None)  # Tune's (checkpoint, metrics)
        if (
            checkpoint is not None
            and checkpoint.filesystem.get_file_info(checkpoint.path).type == pyarrow.fs.FileType.NotFound
        ):
            return None
        return super().restore(checkpoint_path)


def _tune_reader(checkpoint) -> Callable[[], bytes | None]:
    def read() -> bytes | None:
        # The one file, read where it is (as_directory would copy the whole folder to /tmp first).
        try:
            with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{CHECKPOINT_FILE}") as f:
                return f.read()
        except FileNotFoundError:
            return None

    return read


READ_ATTEMPTS = 3  # a checkpoint read that fails (not "missing") is tried again before it is passed over


def _retrying(read: Callable[[], bytes | None]) -> bytes | None:
    """``read()``, again after a failure (a storage hiccup is not a missing checkpoint)."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read()
        except OSError:
            if attempt + 1 == READ_ATTEMPTS:
                raise
            time.sleep(1)
    return None


class _Unusable(Exception):
    """A checkpoint that is not a state for this trial (the message says why)."""


def _checked_state(data: bytes | None, trainer: Trainer | ArrayTrainer) -> dict:
    """The trainer state in ``data``, or an exception saying why it is not one for this trial
    (an array's state: for this array, its members in the same order)."""
    if not data:
        raise _Unusable("missing" if data is None else "empty file")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    found = state if isinstance(state, dict) else {}
    if isinstance(trainer, ArrayTrainer):
        ours, saved = [c.to_flat() for c in trainer.cfgs], found.get("configs")
        unusable = f"not an array state ({type(state).__name__} without its members' configs)"
    else:
        ours, saved = [trainer.cfg.to_flat()], [found.get("config")]
        unusable = f"not a trainer state ({type(state).__name__} without a config)"
    if not isinstance(saved, list) or not all(isinstance(c, dict) for c in saved):
        raise _Unusable(unusable)
    if len(saved) != len(ours):
        raise _Unusable(f"another array's state: {len(saved)} members, this array's {len(ours)}")
    for saved_config, config in zip(saved, ours):
        for key, value in config.items():
            if key in saved_config and key not in _WHERE_NOT_WHAT and saved_config[key] != value:
                raise _Unusable(f"another trial's state: {key} {saved_config[key]!r}, this trial's {value!r}")
    epoch = state.get("epoch")
    if not isinstance(epoch, int) or not 0 <= epoch <= trainer.epochs:
        raise _Unusable(f"epoch {epoch!r} is not in 0…{trainer.epochs}")
    return state


def passed_over_reason(err: Exception) -> str:
    """Why a checkpoint was passed over, in a few words on one line."""
    if isinstance(err, _Unusable):
        return str(err)
    if isinstance(err, KeyError):
        return f"not a trainer state (no {err})"
    if str(err).startswith("Weights only load failed") and err.__context__ is not None:
        err = err.__context__  # torch's advice to load without weights_only does not apply to a corrupt file
    text = " ".join(str(err).split()).split(". ")[0]  # the first sentence: torch goes on with advice
    return f"{type(err).__name__}: {text[:200]}{'…' if len(text) > 200 else ''}" if text else type(err).__name__


def _restore(trainer: Trainer | ArrayTrainer, trial_uri: str, checkpoint) -> tuple[Trainer | ArrayTrainer, str | None]:
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
    trainer, warning, _ = _choose(trainer, trial_uri, checkpoint)
    return trainer, warning


def _choose(
    trainer: Trainer | ArrayTrainer, trial_uri: str, checkpoint
) -> tuple[Trainer | ArrayTrainer, str | None, bytes | None]:
    """_restore's work; also the bytes of the checkpoint it loaded (None: none, epoch 0)."""
    candidates: dict[int, tuple[str, Callable[[], bytes | None]]] = {
        _checkpoint_index(folder): (
            folder,
            lambda folder=folder: storage.read_bytes(folder, CHECKPOINT_FILE, only_missing_is_none=True),
        )
        for folder in storage.subfolders(trial_uri, "checkpoint_")
        if _checkpoint_index(folder) >= 0
    }
    if checkpoint is not None:  # read as Tune gives it (it may lie elsewhere than the listing)
        candidates[_checkpoint_index(checkpoint.path)] = (checkpoint.path, _tune_reader(checkpoint))
    passed_over, used, data = [], None, None
    initial = trainer.state_dict() if candidates else None  # epoch 0, to undo a load that failed halfway
    for index in sorted(candidates, reverse=True):
        folder, read = candidates[index]
        name = f"{folder.rstrip('/').rsplit('/', 1)[-1]}/{CHECKPOINT_FILE}"
        try:
            data = _retrying(read)
            state = _checked_state(data, trainer)
        except Exception as err:
            passed_over.append(f"{name} ({passed_over_reason(err)})")
            data = None
            continue
        try:
            trainer.load_state_dict(state)
        except Exception as err:
            trainer.load_state_dict(initial)
            passed_over.append(f"{name} ({passed_over_reason(err)})")
            data = None
            continue
        used = name.split("/", 1)[0]
        break
    if not passed_over:
        return trainer, None, data
    then = f"continuing from epoch {trainer.epoch} of {used}" if used else "restarting from epoch 0"
    return trainer, f"warning: trial {trial_uri}: cannot restore {', '.join(passed_over)}; {then}", data


def _on_worker(experiment_path: str) -> tuple[dict, str]:
    """In the trial's worker: torch's threads from the CPUs Tune gave the trial; where it runs;
    its folder in storage."""
    import ray
    from ray import tune

    context = ray.get_runtime_context()
    cpus = context.get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    placement = {NODE_ID: context.get_node_id(), HOSTNAME: socket.gethostname()}
    return placement, storage.join(experiment_path, Path(tune.get_context().get_trial_dir()).name)


def _report(result: dict, state: dict | bytes | None = None) -> None:
    """One result to Tune, with ``state`` (or the file of one) as its checkpoint when given."""
    from ray import tune

    if state is None:
        tune.report(result)
        return
    # Tune keeps the best checkpoint by this number: the best epoch's weights (resnet_core.metrics).
    result = {**result, M.BEST_EPOCH_RANK: M.best_epoch_rank(result)}
    with tempfile.TemporaryDirectory() as folder:
        if isinstance(state, bytes):
            (Path(folder) / CHECKPOINT_FILE).write_bytes(state)
        else:
            torch.save(state, Path(folder) / CHECKPOINT_FILE)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def _epoch_result(metrics: dict, epochs: int, extra: dict, ending: Callable[[], dict]) -> dict:
    """A trial's result for an epoch it trained: complete, with ``ending()`` (its layer responses
    and final metrics), at its last."""
    result = {**metrics, **extra}
    last = metrics[M.EPOCH] == epochs
    result[STATUS] = str(Status.COMPLETED if last else Status.RUNNING)
    if last:
        result.update(ending())
    return result


def _diverged_result(epoch: int, extra: dict) -> dict:
    """A diverged trial's last result: the worst possible for the searcher and scheduler, not a crash."""
    return {M.EPOCH: epoch, M.VAL_ERROR: 1.0, M.TRAIN_ERROR: 1.0, **extra, STATUS: str(Status.DIVERGED)}


def _replayed_result(history: list[dict], extra: dict, ending: Callable[[], dict]) -> dict:
    """A finished trial's last result again, after a restore from its final checkpoint (the driver
    died before recording the end): nothing is trained or checkpointed again. (No node: this one
    trained nothing; the node that did is in the earlier results.)"""
    return {**history[-1], **extra, REPLAYED: True, STATUS: str(Status.COMPLETED), **ending()}


Send = Callable[[dict, Callable[[], dict] | None], None]  # (result, its checkpoint's state or None)


def _train(trainer: Trainer, trial_uri: str, checkpoint, placement: dict, send: Send, restore=_restore) -> None:
    """A trial's epochs from its newest usable checkpoint on (as ``restore`` chooses it), each
    epoch's result (and state) through ``send``."""
    trainer, warning = restore(trainer, trial_uri, checkpoint)
    # The epochs before the restore go with the first result, once: the driver logs any that
    # it had not (it may have died before they reached it), so MLflow keeps epochs 1…N.
    # (As JSON text: one flat value in Tune's result.json and progress lines.)
    # So does a warning about the restore: the driver prints it (a trial's own output stays in
    # its worker's log) and Tune keeps it in the trial's results.
    once = {EARLIER_EPOCHS: json.dumps(trainer.history)} if trainer.history else {}
    if warning:
        once[NOTICE] = warning

    def ending() -> dict:  # with the last epoch: Fig. 7's responses and the 10-crop test errors
        return {**trainer.final_metrics(), LAYER_RESPONSES: trainer.layer_response_std()}

    def report(r) -> None:
        result = _epoch_result(r.metrics, r.epochs, {**placement, **once}, ending)
        once.clear()
        send(result, r.checkpoint)

    if trainer.history and trainer.epoch >= trainer.epochs:
        send(_replayed_result(trainer.history, once, ending), None)
        return
    trainer.run(report)
    if trainer.status == Status.DIVERGED:
        send(_diverged_result(trainer.epoch + 1, {**placement, **once}), None)


def _to_tune(result: dict, checkpoint: Callable[[], dict] | None) -> None:
    _report(result, checkpoint() if checkpoint else None)


def train_trial(config: dict[str, Any], experiment_path: str) -> None:
    """Tune's function trainable for one trial: ``config`` is the trial's flat config (the keys of
    RunConfig.to_flat, as in MLflow's params). Resumes from Tune's checkpoint when there is one,
    reports every epoch's metrics with a checkpoint, and never talks to MLflow (the driver's
    tracker does)."""
    from ray import tune

    placement, trial_uri = _on_worker(experiment_path)
    trainer = Trainer(RunConfig.from_flat(resolve_trial(config, {})))
    placement.update({DEVICE: str(trainer.device), SPEED: str(trainer.speed)})
    _train(trainer, trial_uri, tune.get_checkpoint(), placement, _to_tune)


def _data_parallel_worker(loop: dict) -> None:
    """One process of a data-parallel trial, in a Ray Train worker (torch's process group is set
    up). Every process trains its part of each batch and computes every result (evaluation is
    shared out); rank 0 hands them, with its state, to the trial's Tune function."""
    import ray
    import ray.train.torch

    shard = Shard.of_process_group()
    flat = resolve_trial(loop["config"], {})
    if flat["train.device"] == "auto" or flat["train.device"].startswith("cuda"):
        # The GPU Ray Train gave this worker: several workers may share a node, each its own GPU.
        flat["train.device"] = str(ray.train.torch.get_device())
    torch.set_num_threads(max(1, int(loop["cpu"])))
    trainer = Trainer(RunConfig.from_flat(flat), shard=shard)
    placement = {
        NODE_ID: ray.get_runtime_context().get_node_id(),
        HOSTNAME: socket.gethostname(),
        DEVICE: str(trainer.device),
        SPEED: f"{trainer.speed} ddp={shard.size}",
    }

    def send(result: dict, checkpoint: Callable[[], dict] | None) -> None:
        if shard.rank == 0:
            state = None
            if checkpoint is not None:
                state = io.BytesIO()
                torch.save(checkpoint(), state)
            loop["results"].put((result, state.getvalue() if state else None))

    _train(trainer, loop["trial_uri"], loop["checkpoint"], placement, send, restore=_restored_as_rank_0_chose(shard))


def _restored_as_rank_0_chose(shard: Shard):
    """A data-parallel trial's restore: rank 0 alone reads and chooses the checkpoint and sends
    its bytes (and its warning) to every rank, which all load them. Each rank choosing for itself
    could load different epochs (one read failing) after DDP had made the replicas equal."""
    import torch.distributed as dist

    def restore(trainer: Trainer, trial_uri: str, checkpoint) -> tuple[Trainer, str | None]:
        chosen: list = [None, None]
        if shard.rank == 0:
            trainer, warning, data = _choose(trainer, trial_uri, checkpoint)
            chosen = [data, warning]
        dist.broadcast_object_list(chosen, src=0, device=trainer.device if trainer.device.type == "cuda" else None)
        data, warning = chosen
        if shard.rank != 0 and data is not None:
            trainer.load_state_dict(_checked_state(data, trainer))
        return trainer, warning

    return restore


def train_data_parallel_trial(
    config: dict[str, Any], experiment_path: str, workers: int, cpu: float, gpu: float
) -> None:
    """A data-parallel trial (resources.workers > 1): Ray Train's TorchTrainer runs ``workers``
    processes (gloo on CPU, NCCL on GPUs) with ``cpu`` and ``gpu`` each, placed by Ray like any
    actors (on one node or several). This Tune function holds no resources itself; it passes
    rank 0's results and checkpoints on to Tune, so the trial reports, checkpoints, resumes and
    is tracked like a single-process one. Retries are Tune's (from the trial's checkpoint)."""
    from ray import train, tune
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    _, trial_uri = _on_worker(experiment_path)
    results = Queue(maxsize=1, actor_options={"num_cpus": 0})  # rank 0 waits while Tune takes a result
    trainer = TorchTrainer(
        _data_parallel_worker,
        train_loop_config={
            "config": config,
            "trial_uri": trial_uri,
            "checkpoint": tune.get_checkpoint(),
            "results": results,
            "cpu": cpu,
        },
        scaling_config=train.ScalingConfig(
            num_workers=workers, use_gpu=gpu > 0, resources_per_worker={"CPU": cpu, **({"GPU": gpu} if gpu else {})}
        ),
        run_config=train.RunConfig(
            name="train",
            storage_path=trial_uri,
            storage_filesystem=storage.tune_filesystem(trial_uri),
            failure_config=train.FailureConfig(max_failures=0),
        ),
    )
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:
            failure.append(err)

    fitting = threading.Thread(target=fit, name="ray-train", daemon=True)
    fitting.start()
    while True:
        try:
            result, state = results.get(timeout=0.5)
        except Empty:
            if fitting.is_alive() or not results.empty():
                continue
            break
        _report(result, state)
    if failure:
        raise failure[0]


def _array_result(records: dict[int, dict], metric: str) -> dict:
    """An array trial's result: its best member's (lowest ``metric``: every sweep metric is an
    error or a loss), so ASHA and the searcher judge the array by its best member, and every
    member's own result under MEMBERS (JSON text: one flat value, as EARLIER_EPOCHS)."""
    trained = {k: r for k, r in records.items() if r[STATUS] != str(Status.DIVERGED)}
    if trained:
        best = min(trained, key=lambda k: (trained[k][metric], k))
        top = {key: v for key, v in trained[best].items() if key not in (EARLIER_EPOCHS, LAYER_RESPONSES, NOTICE)}
        top[ARRAY_BEST] = best
    else:
        top = _diverged_result(max(r[M.EPOCH] for r in records.values()), {})
    return {**top, MEMBERS: json.dumps({str(k): r for k, r in sorted(records.items())})}


def train_array_trial(config: dict[str, Any], experiment_path: str, metric: str) -> None:
    """An array of trials (config[ARRAY]: the members' flat configs) as one Tune trial: one
    result per epoch holding each member's result as its single trial reports it, one array
    checkpoint per epoch."""
    from ray import tune

    placement, trial_uri = _on_worker(experiment_path)
    trainer = ArrayTrainer([RunConfig.from_flat(c) for c in json.loads(config[ARRAY])])
    placement.update({DEVICE: str(trainer.device), SPEED: f"{trainer.speed} array={trainer.size}"})
    trainer, warning = _restore(trainer, trial_uri, tune.get_checkpoint())
    once = {k: {EARLIER_EPOCHS: json.dumps(h)} for k, h in enumerate(trainer.histories) if h}  # as train_trial

    def replayed(k: int) -> dict:
        if trainer.statuses[k] == Status.DIVERGED:
            return {**_diverged_result(len(trainer.histories[k]) + 1, once.pop(k, {})), REPLAYED: True}
        return _replayed_result(
            trainer.histories[k], once.pop(k, {}), lambda: {LAYER_RESPONSES: trainer.layer_response_std(k)}
        )

    # Members that had ended before the restore are told again with the first result: the driver
    # may have died before it recorded their end (it skips what it has).
    finished = trainer.epoch >= trainer.epochs
    pending = {k: replayed(k) for k in range(trainer.size) if finished or trainer.statuses[k] != Status.RUNNING}
    told = set(pending)  # members whose last result is sent or pending

    def send(records: dict[int, dict], state: dict | None = None) -> None:
        nonlocal warning
        if warning:  # printed once by the driver, with the first member's result
            records[min(records)][NOTICE], warning = warning, None
        _report(_array_result(records, metric), state)

    def report(r: ArrayEpochReport) -> None:
        records = {**pending}
        pending.clear()
        for k, metrics in r.metrics.items():
            records[k] = _epoch_result(
                metrics,
                r.epochs,
                {**placement, **once.pop(k, {})},
                lambda k=k: {LAYER_RESPONSES: trainer.layer_response_std(k)},
            )
        for k in r.diverged:  # frozen at once; the others go on
            records[k] = _diverged_result(r.epoch, {**placement, **once.pop(k, {})})
            told.add(k)
        send(records, r.checkpoint())

    if not finished:
        trainer.run(report)
    # Members that diverged in an epoch that no member finished: the array made no report for it.
    for k in range(trainer.size):
        if trainer.statuses[k] == Status.DIVERGED and k not in told:
            pending[k] = _diverged_result(trainer.epoch + 1, {**placement, **once.pop(k, {})})
    if pending:
        send(pending)


def error_trace(trial) -> str:
    """A failed Tune trial's error trace, as soon as Tune has it: in the driver's staging folder
    before it is synced to storage (where Trial.get_error reads it)."""
    name = ray_compat.error_filename(trial)
    local = Path(trial.local_path or "", name or "")
    trace = local.read_text(errors="replace") if name and local.is_file() else trial.get_error() or ""
    return re.sub(r"\x1b\[[0-9;]*m", "", trace)  # Ray colours the task's name
