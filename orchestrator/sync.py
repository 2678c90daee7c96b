"""`resnet-sweep sync`: a sweep's MLflow runs rebuilt or completed from its Tune folder.

Tune's per-trial records (result.json: every report, in order) are the source of truth; the
driver's tracker writes what they hold to MLflow as it goes. When it could not (MLflow was down
when its driver died, or the writes outlived its retries) `sync` replays those records through
the same tracker, which skips what MLflow already has: running it twice changes nothing."""
from __future__ import annotations

import json

from resnet_core.metrics import Status

from . import driver_lock, storage
from .arrays import ArrayMembers, trained_epochs
from .spec import SpecError
from .sweep import SPEC_FILE, SweepError, open_sweep, stop_when_taken, sweep_tracker, write_tracking
from .vocabulary import STATUS, TAG_STORAGE

__all__ = ["sync_sweep"]

ENDED = {str(Status.COMPLETED), str(Status.DIVERGED)}  # a trial's own last report says it ended


def _trials(experiment_path: str) -> list:
    """The sweep's trials as Tune saved them (id, config, status, folder)."""
    from ray.tune import ExperimentAnalysis

    try:
        return ExperimentAnalysis(experiment_path).trials
    except Exception as err:  # noqa: BLE001 — no experiment state yet, or not Tune's
        raise SpecError("", f"{experiment_path} holds no Tune records to sync ({type(err).__name__}: {err})") from None


def _records(experiment_path: str, trial) -> list[dict]:
    """Tune's record of the trial's reports (result.json: one JSON object per line)."""
    from ray.tune.result import EXPR_RESULT_FILE

    folder = storage.join(experiment_path, trial.path.rstrip("/").rsplit("/", 1)[-1])
    text = storage.read_text(folder, EXPR_RESULT_FILE) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sync_sweep(experiment_path: str, *, tracking_uri: str | None = None) -> int:
    prep, tracking = open_sweep(experiment_path, tracking_uri)
    trials = _trials(experiment_path)
    if not tracking.get("sweep_key"):  # tracked nowhere yet: the parent run is made now, found next time
        tracking = write_tracking(prep)
    try:
        with driver_lock.hold(experiment_path, prep.name, on_lost=stop_when_taken):  # not while a driver writes the same runs
            return _sync(prep, tracking, trials, experiment_path)
    except driver_lock.SweepBusy as err:
        raise SpecError("", f"{err}; its driver logs to MLflow itself") from None
    except driver_lock.LockUnreadable as err:
        raise SweepError(str(err)) from None


def _sync(prep, tracking: dict, trials: list, experiment_path: str) -> int:
    tracker = sweep_tracker(prep, tracking["sweep_key"], tags={TAG_STORAGE: experiment_path},
                            artifacts={SPEC_FILE: prep.parsed.text})
    tracker.setup()
    # With arrays, the records are replayed as the driver saw them: each member as a trial.
    arrays = ArrayMembers([tracker]) if prep.plan.arrays else None
    feed = arrays or tracker
    interrupted, epochs = [], 0
    for trial in trials:
        records = _records(experiment_path, trial)
        if not records and trial.status != "ERROR":
            continue  # never started: nothing to record
        for record in records:
            feed.on_trial_result(iteration=0, trials=trials, trial=trial, result=record)
        epochs += len({pair for r in records for pair in trained_epochs(r)})
        if trial.status in ("TERMINATED", "ERROR") or (records and records[-1].get(STATUS) in ENDED):
            (feed.on_trial_error if trial.status == "ERROR" else feed.on_trial_complete)(iteration=0, trials=trials, trial=trial)
        else:  # left midway by a driver that died or was stopped: `resume` continues it
            interrupted.append(trial)
    if arrays:
        interrupted = arrays.unfinished(interrupted)
    planned = len(arrays.expand(trials)) if arrays else len(trials)  # the trials MLflow has runs for
    # The parent's status is the driver's to set; sync sets it only for a driver that died first.
    status = None
    if not tracker.parent_ended():
        done = not interrupted and planned >= tracking.get("num_trials", planned)
        status = Status.COMPLETED if done else Status.INTERRUPTED
    left = tracker.end_sweep(interrupted, status)
    print(f"synced {prep.name} to {prep.tracking_uri} (experiment {prep.experiment!r}): {planned} trials, "
          f"{epochs} epochs in Tune's records; sent {tracker.points_sent} metric points, "
          f"created {tracker.runs_created} runs" + (f"; {len(interrupted)} trial(s) unfinished (resume them with "
                                                    f"`resnet-sweep resume {experiment_path}`)" if interrupted else ""))
    return 1 if left else 0
