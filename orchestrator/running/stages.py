"""The Tune experiments of one sweep. The first is the sweep's folder itself; each `run --extend`
that adds trials adds one more, in a sub-folder ``extension-K`` of it, with the trials that are
new. Tune cannot add trials to an experiment it has saved (a restored search algorithm has its
points), so a grown sweep is a chain of experiments that `resume` continues in order: one
folder, one driver lock, one MLflow parent run, one sweep to the user."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.persistence import storage
from orchestrator.running.arrays import member_records, members_of
from orchestrator.sweepfile.growth import EarlierTrial

__all__ = ["STAGES_FILE", "Stage", "earlier_trials", "record_extension", "retired", "stages", "started"]

# In the sweep's folder: the stages `run --extend` added, and the trials it retired (those the
# sweep file no longer has, by growth.trial_identity).
STAGES_FILE = "extensions.json"
PREFIX = "extension-"


@dataclass(frozen=True)
class Stage:
    """One Tune experiment of the sweep: ``name`` is its sub-folder ("" for the first)."""

    name: str
    planned: int  # the trials it adds (Optuna: the draws)
    points: list[dict[str, Any]] | None = None  # grid/random: the new trials' configs
    file: str | None = None  # the sweep file it was planned from (resolved), to plan it again from

    def path(self, sweep_path: str) -> str:
        """The Tune experiment's folder."""
        return storage.join(sweep_path, self.name) if self.name else sweep_path.rstrip("/")


def _record(sweep_path: str) -> dict:
    text = storage.read_text(sweep_path, STAGES_FILE)
    return json.loads(text) if text else {"stages": [], "retired": []}


def _added(sweep_path: str) -> list[Stage]:
    return [Stage(**stage) for stage in _record(sweep_path)["stages"]]


def retired(sweep_path: str) -> set[str]:
    """The identities of the trials the sweep's file no longer has."""
    return set(_record(sweep_path)["retired"])


def stages(sweep_path: str, first_planned: int) -> list[Stage]:
    """Every stage of the sweep in order: the first (``first_planned`` trials), then each extension."""
    return [Stage("", first_planned), *_added(sweep_path)]


def started(sweep_path: str, stage: Stage) -> bool:
    """Whether Tune has saved this stage's experiment (it can be restored)."""
    from ray import tune

    path = stage.path(sweep_path)
    return tune.Tuner.can_restore(path, storage_filesystem=storage.tune_filesystem(path))


def record_extension(
    sweep_path: str, removed: set[str], stage: tuple[int, list[dict[str, Any]] | None, str] | None
) -> None:
    """One write of what a `run --extend` decided: the trials it retires and, when it adds
    trials, its stage (planned, points, file). A last stage that never started (its driver
    stopped first) is replaced: what it would have run is planned again now."""
    added = _added(sweep_path)
    if stage is not None:
        if added and not started(sweep_path, added[-1]):
            added.pop()
        added.append(Stage(f"{PREFIX}{len(added) + 1}", *stage))
    record = {"stages": [asdict(s) for s in added], "retired": sorted(removed)}
    storage.write_text(sweep_path, STAGES_FILE, json.dumps(record))


def earlier_trials(sweep_path: str, first_planned: int) -> list[EarlierTrial]:
    """The trials of every started stage, each array member as a trial, as Tune records them."""
    from ray.tune import ExperimentAnalysis

    found = []
    for stage in stages(sweep_path, first_planned):
        if not started(sweep_path, stage):
            continue
        for trial in ExperimentAnalysis(stage.path(sweep_path)).trials:
            finished = trial.status == "TERMINATED"
            members = members_of(trial.config)
            if members is None:
                found.append(EarlierTrial(trial.config, finished, trial.last_result or {}))
                continue
            results = member_records(trial.last_result)
            found += [EarlierTrial(c, finished, results.get(k, {})) for k, c in enumerate(members)]
    return found
