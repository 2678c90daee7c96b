"""Tune's records of a sweep's trials (each trial's result.json: every report, in order), the
source of truth, replayed through the MLflow tracker, which skips what MLflow already has.
`sync` replays every trial; `resume` first replays the trials Tune records as finished, which
get no callbacks once Tune continues: writes a killed driver still held for a down MLflow."""

from __future__ import annotations

import json
from dataclasses import dataclass

from orchestrator.persistence import storage
from orchestrator.running import ray_compat
from orchestrator.running.arrays import ArrayMembers, trained_epochs
from orchestrator.running.tracker import SweepTracker
from orchestrator.sweepfile.spec import SpecError
from orchestrator.vocabulary import STATUS
from resnet_core.metrics import Status

__all__ = ["Replayed", "replay", "tune_trials"]

ENDED = {str(Status.COMPLETED), str(Status.DIVERGED)}  # a trial's own last report says it ended


def tune_trials(experiment_path: str) -> list:
    """The sweep's trials as Tune saved them (id, config, status, folder)."""
    from ray.tune import ExperimentAnalysis

    try:
        return ExperimentAnalysis(experiment_path).trials
    except Exception as err:
        raise SpecError("", f"{experiment_path} holds no Tune records to sync ({type(err).__name__}: {err})") from None


def _records(experiment_path: str, trial) -> list[dict]:
    """Tune's record of the trial's reports (result.json: one JSON object per line)."""

    folder = storage.join(experiment_path, trial.path.rstrip("/").rsplit("/", 1)[-1])
    text = storage.read_text(folder, ray_compat.RESULT_FILE) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class Replayed:
    interrupted: list  # trials left midway (members, for arrays)
    epochs: int  # epochs in Tune's records of the trials replayed
    planned: int  # the trials MLflow has runs for (members, for arrays)


def replay(
    tracker: SweepTracker, trials: list, experiment_path: str, *, arrays: bool, finished_only: bool = False
) -> Replayed:
    """Each trial's records through ``tracker`` (its run, epochs and end); ``finished_only``:
    only the trials Tune records as ended."""
    # With arrays, the records are replayed as the driver saw them: each member as a trial.
    members = ArrayMembers([tracker]) if arrays else None
    feed = members or tracker
    interrupted, epochs = [], 0
    for trial in trials:
        records = _records(experiment_path, trial)
        ended = trial.status in ("TERMINATED", "ERROR") or bool(records and records[-1].get(STATUS) in ENDED)
        if (finished_only and trial.status != "TERMINATED") or (not records and trial.status != "ERROR"):
            continue  # never started: nothing to record
        for record in records:
            feed.on_trial_result(iteration=0, trials=trials, trial=trial, result=record)
        epochs += len({pair for r in records for pair in trained_epochs(r)})
        if ended:
            (feed.on_trial_error if trial.status == "ERROR" else feed.on_trial_complete)(
                iteration=0, trials=trials, trial=trial
            )
        else:  # left midway by a driver that died or was stopped: `resume` continues it
            interrupted.append(trial)
    if members:
        interrupted = members.unfinished(interrupted)
    return Replayed(interrupted, epochs, len(members.expand(trials)) if members else len(trials))
