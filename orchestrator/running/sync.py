"""`resnet-sweep sync`: a sweep's MLflow runs rebuilt or completed from its Tune folder.

Tune's per-trial records (result.json: every report, in order) are the source of truth; the
driver's tracker writes what they hold to MLflow as it goes. When it could not (MLflow was down
when its driver died, or the writes outlived its retries) `sync` replays those records through
the same tracker, which skips what MLflow already has: running it twice changes nothing."""

from __future__ import annotations

from orchestrator.persistence import driver_lock
from orchestrator.running.replay import replay, tune_trials
from orchestrator.running.stages import stages, started
from orchestrator.running.sweep import SPEC_FILE, SweepError, open_sweep, stop_when_taken, sweep_tracker, write_tracking
from orchestrator.sweepfile.spec import SpecError
from orchestrator.vocabulary import TAG_STORAGE
from resnet_core.metrics import Status

__all__ = ["sync_sweep"]


def sync_sweep(experiment_path: str, *, tracking_uri: str | None = None) -> int:
    prep, tracking = open_sweep(experiment_path, tracking_uri)
    chain = stages(experiment_path, tracking.get("num_trials", prep.plan.num_trials))
    # Every Tune experiment of a grown sweep (stages.py); the first is there from the start.
    trials = [
        (s.path(experiment_path), tune_trials(s.path(experiment_path)))
        for s in chain
        if s == chain[0] or started(experiment_path, s)
    ]
    if not tracking.get("sweep_key"):  # tracked nowhere yet: the parent run is made now, found next time
        tracking = write_tracking(prep)
    try:
        with driver_lock.hold(
            experiment_path, prep.name, on_lost=stop_when_taken
        ):  # not while a driver writes the same runs
            return _sync(prep, tracking, trials, experiment_path)
    except driver_lock.SweepBusy as err:
        raise SpecError("", f"{err}; its driver logs to MLflow itself") from None
    except driver_lock.LockUnavailable as err:
        raise SweepError(str(err)) from None


def _sync(prep, tracking: dict, trials: list[tuple[str, list]], experiment_path: str) -> int:
    tracker = sweep_tracker(
        prep, tracking["sweep_key"], tags={TAG_STORAGE: experiment_path}, artifacts={SPEC_FILE: prep.parsed.text}
    )
    tracker.setup()
    interrupted, planned, epochs = [], 0, 0
    for path, found in trials:
        done = replay(tracker, found, path, arrays=bool(prep.plan.arrays))
        interrupted, planned, epochs = interrupted + done.interrupted, planned + done.planned, epochs + done.epochs
    # The parent's status is the driver's to set; sync sets it only for a driver that died first.
    status = None
    if not tracker.parent_ended():
        finished = not interrupted and planned >= tracking.get("num_trials", planned)
        status = Status.COMPLETED if finished else Status.INTERRUPTED
    left = tracker.end_sweep(interrupted, status)
    print(
        f"synced {prep.name} to {prep.tracking_uri} (experiment {prep.experiment!r}): {planned} trials, "
        f"{epochs} epochs in Tune's records; sent {tracker.points_sent} metric points, "
        f"created {tracker.runs_created} runs"
        + (
            f"; {len(interrupted)} trial(s) unfinished (resume them with `resnet-sweep resume {experiment_path}`)"
            if interrupted
            else ""
        )
    )
    return 1 if left else 0
