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

__all__ = ["STAGES_FILE", "Stage", "add_stage", "earlier_trials", "stages", "started"]

STAGES_FILE = "extensions.json"  # in the sweep's folder: the stages `run --extend` added
PREFIX = "extension-"


@dataclass(frozen=True)
class Stage:
    """One Tune experiment of the sweep: ``name`` is its sub-folder ("" for the first)."""

    name: str
    planned: int  # the trials it adds (Optuna: the draws)
    points: list[dict[str, Any]] | None = None  # grid/random: the new trials' configs

    def path(self, sweep_path: str) -> str:
        """The Tune experiment's folder."""
        return storage.join(sweep_path, self.name) if self.name else sweep_path.rstrip("/")


def _added(sweep_path: str) -> list[Stage]:
    text = storage.read_text(sweep_path, STAGES_FILE)
    return [Stage(**record) for record in json.loads(text)] if text else []


def stages(sweep_path: str, first_planned: int) -> list[Stage]:
    """Every stage of the sweep in order: the first (``first_planned`` trials), then each extension."""
    return [Stage("", first_planned), *_added(sweep_path)]


def started(sweep_path: str, stage: Stage) -> bool:
    """Whether Tune has saved this stage's experiment (it can be restored)."""
    from ray import tune

    path = stage.path(sweep_path)
    return tune.Tuner.can_restore(path, storage_filesystem=storage.tune_filesystem(path))


def add_stage(sweep_path: str, planned: int, points: list[dict[str, Any]] | None) -> Stage:
    """Records a new stage; a last stage that never started (its driver stopped first) is
    replaced: what it would have run is planned again now."""
    added = _added(sweep_path)
    if added and not started(sweep_path, added[-1]):
        added.pop()
    stage = Stage(f"{PREFIX}{len(added) + 1}", planned, points)
    storage.write_text(sweep_path, STAGES_FILE, json.dumps([asdict(s) for s in [*added, stage]]))
    return stage


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
