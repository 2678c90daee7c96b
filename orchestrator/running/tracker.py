"""MLflow as the home of results: the Tune callback that tells a sweep's trials to its MLflow runs.

Every MLflow call happens in the driver, in a Tune callback: workers need no MLflow access and a
SQLite store sees a single writer. The runs and their writes are orchestrator.tracking.sweep_runs
(a parent run per sweep, a child run per trial, found again on resume, held while MLflow is down);
this callback turns Tune's hooks and Trial objects into the plain facts it takes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ray.tune import Callback

from orchestrator.running.progress import TUNE_INTERRUPT, was_interrupted
from orchestrator.running.trainable import error_trace
from orchestrator.tracking.sweep_runs import END_WAIT_S, SweepRuns
from resnet_core.metrics import Status

__all__ = ["SweepTracker"]


def _figures():
    """report.figures, which draws a trial's figures (a layer above MLflow's runs)."""
    from orchestrator.report import figures

    return figures


class SweepTracker(Callback):
    """The Tune callback that writes the sweep to MLflow (``self.sweep``: its runs)."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        sweep_key: str,
        sweep_name: str,
        tags: dict[str, str],
        artifacts: dict[str, str],
        trial_namer: Callable[[dict], str],
        planned_epochs: int,
        client=None,
    ) -> None:
        self.sweep = SweepRuns(
            tracking_uri=tracking_uri,
            experiment=experiment,
            sweep_key=sweep_key,
            sweep_name=sweep_name,
            tags=tags,
            artifacts=artifacts,
            trial_namer=trial_namer,
            planned_epochs=planned_epochs,
            figures=_figures,
            client=client,  # tests give a fake MLflow
        )
        self.last_result: dict[str, dict] = {}  # Tune trial id → the last result this callback saw

    _OLD_FIELDS = ("parent_id", "runs", "names", "logged_epoch", "nodes", "points_sent", "runs_created", "runs_ended")

    def __setstate__(self, state: dict) -> None:
        """A tracker from Tune's saved state (tuner.pkl). One saved by a version from before
        SweepRuns held its fields flat: its runs are carried over, so `resume` of a sweep started
        with that version goes on in the same MLflow runs."""
        if "sweep" not in state:
            sweep = SweepRuns(
                tracking_uri=state["tracking_uri"],
                experiment=state["experiment"],
                sweep_key=state["sweep_key"],
                sweep_name=state["sweep_name"],
                tags=state["tags"],
                artifacts=state["artifacts"],
                trial_namer=state["trial_namer"],
                planned_epochs=state["planned_epochs"],
                figures=_figures,
            )
            for name in self._OLD_FIELDS:
                if name in state:
                    setattr(sweep, name, state[name])
            state = {"sweep": sweep, "last_result": state.get("last_result", {})}
        self.__dict__.update(state)

    # --- what the driver, `resume` and `sync` read of the runs ------------------------------------
    @property
    def client(self):
        return self.sweep.client

    @property
    def trial_namer(self) -> Callable[[dict], str]:
        return self.sweep.trial_namer

    @property
    def runs(self) -> dict[str, str]:
        """Tune trial id → MLflow run id."""
        return self.sweep.runs

    @property
    def points_sent(self) -> int:
        return self.sweep.points_sent

    @property
    def runs_created(self) -> int:
        return self.sweep.runs_created

    @property
    def runs_ended(self) -> int:
        return self.sweep.runs_ended

    def find_runs(self) -> bool:
        return self.sweep.find_runs()

    def parent_ended(self) -> bool:
        return self.sweep.parent_ended()

    # --- state kept with the Tune experiment (restored by Tuner.restore) ----------------------
    def get_state(self) -> dict:
        """Saved with Tune's experiment state: the writes before it are made first, so a driver
        killed after a save has nothing in Tune's state that MLflow lacks (resume relies on it)."""
        return self.sweep.state()

    def set_state(self, state: dict) -> None:
        self.sweep.restore(state)

    # --- Tune's hooks -------------------------------------------------------------------------------
    def setup(self, **info) -> None:
        self.sweep.start_sweep()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.sweep.start_trial(trial.trial_id, trial.config)

    def on_trial_restore(self, iteration, trials, trial, **info) -> None:
        self.on_trial_start(iteration, trials, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last_result[trial.trial_id] = result
        self.sweep.log_result(trial.trial_id, trial.config, result)

    # Tune's loop waits for a trial's end to be written, after the writes before it: once the
    # progress line says a trial ended, MLflow says so too.
    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.sweep.end_trial(trial.trial_id, trial.config, self._last(trial))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.sweep.end_trial(
            trial.trial_id, trial.config, self._last(trial), error_trace=functools.partial(error_trace, trial)
        )

    def _last(self, trial) -> dict:
        return self.last_result.get(trial.trial_id) or trial.last_result or {}

    def on_experiment_end(self, trials, **info) -> None:
        left = [t for t in trials if t.status != "ERROR" and was_interrupted(t.last_result)]
        done = not TUNE_INTERRUPT.seen and all(t.status in ("TERMINATED", "ERROR") for t in trials)
        self.end_sweep(left, Status.COMPLETED if done else Status.INTERRUPTED)

    def end_sweep(self, interrupted: list, status: Status | None, *, wait_s: float = END_WAIT_S) -> int:
        """The sweep's last writes (SweepRuns.end_sweep) with ``interrupted``, the Tune trials left
        midway; returns the writes MLflow did not take."""
        return self.sweep.end_sweep([t.trial_id for t in interrupted], status, wait_s=wait_s)
