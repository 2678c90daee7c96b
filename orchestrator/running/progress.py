"""What the user sees while a sweep runs and when it ends: readable trial names, one line per
trial epoch and per status change (with the node the trial runs on), and the final table."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from orchestrator import trial_table
from orchestrator.report import standing
from orchestrator.running import ray_compat
from orchestrator.running.cluster import describe_node
from orchestrator.running.trainable import error_trace
from orchestrator.sweepfile.space import resolve_trial, trial_name
from orchestrator.vocabulary import (
    HOSTNAME,
    NODE_ID,
    NOTICE,
    REPLAYED,
    STATUS,
    describe_status,
    error_line,
    final_status,
)
from resnet_core import metrics as M
from resnet_core.errors import ConfigError
from resnet_core.metrics import Status

__all__ = ["TUNE_INTERRUPT", "Progress", "TrialNamer", "table_rows", "was_interrupted"]


# How often `run` prints the sweep-level line (seconds; RESNET_SWEEP_SUMMARY_S changes it).
def _summary_s() -> float:
    try:
        return max(1.0, float(os.environ.get("RESNET_SWEEP_SUMMARY_S", "60")))
    except ValueError:
        return 60.0


SUMMARY_S = _summary_s()


class TrialNamer:
    """Readable child-run names from a trial's config (picklable, for Tuner.restore)."""

    def __init__(self, varying: list[str]) -> None:
        self.varying = varying

    def __call__(self, config: dict[str, Any]) -> str:
        try:
            resolved = resolve_trial(config, {})
        except ConfigError:  # an invalid Optuna draw: the trial itself will fail and say why
            return "invalid-" + "-".join(f"{v}" for k, v in sorted(config.items()) if k in self.varying)
        return trial_name(resolved, {k: resolved[k] for k in self.varying if k in resolved})


class TrialDirName:
    """Tune's trial (folder) name: the readable name plus Tune's unique trial id."""

    def __init__(self, namer: TrialNamer) -> None:
        self.namer = namer

    def __call__(self, trial) -> str:
        return f"{self.namer(trial.config)}_{trial.trial_id}"


class TuneInterrupt(logging.Filter):
    """Whether Tune was told to stop (Ctrl-C, SIGUSR1): Tune says so only in its log, and ends
    the interrupted trials as if they had finished. Its own resume hint (`Tuner.restore(…)`) is
    dropped: `resnet-sweep resume …` is printed instead."""

    LOGGER = ray_compat.STOP_LOGGER

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(ray_compat.STOP_PREFIX):
            self.seen = True
        return "Tuner.restore" not in message and "Trials did not complete" not in message


TUNE_INTERRUPT = TuneInterrupt()


class TrialErrorTraces(logging.Filter):
    """Tune logs every trial error with its whole trace; the progress lines say it in one line
    (and retries), the trace is in the trial's folder (error.txt) and in MLflow."""

    LOGGER = ray_compat.ERROR_LOGGER

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(ray_compat.ERROR_PREFIX)


def was_interrupted(result: dict | None) -> bool:
    """A trial Tune stopped because the sweep was interrupted: its last result is not `done`."""
    return TUNE_INTERRUPT.seen and not (result or {}).get("done")


def where(result: dict | None) -> str:
    result = result or {}
    return describe_node(result.get(NODE_ID), result.get(HOSTNAME)) if result.get(NODE_ID) else ""


class Progress:
    """Live progress: one line per trial epoch and per status change (a Tune callback)."""

    def __new__(cls, *args, **kwargs):
        from ray.tune import Callback

        # Built lazily so importing this module does not import Ray.
        class _Progress(Callback):
            def __init__(
                self,
                namer: TrialNamer,
                epochs: int,
                stopped_by: str,
                max_failures: int,
                *,
                planned: int,
                epochs_expected: int | None = None,
            ) -> None:
                self.namer, self.epochs, self.start = namer, epochs, time.time()
                self.stopped_by, self.max_failures = stopped_by, max_failures
                self.planned, self.epochs_expected = planned, epochs_expected
                self.done = 0
                self.node: dict[str, str] = {}  # trial id → the node it last reported from
                self.epoch_times: list[int] = []  # when epochs arrived (ms), for the pace
                self.best: dict | None = None
                self.summary_at = time.time() + SUMMARY_S

            def on_step_end(self, iteration, trials, **info):
                if time.time() >= self.summary_at:
                    self.summary_at = time.time() + SUMMARY_S
                    self._say(f"sweep     {standing.summary_line(self._standing(trials))}")

            def _standing(self, trials) -> standing.Standing:
                """The sweep-level line's numbers, from Tune's trials (`status` has them from MLflow)."""
                now = standing.Standing(
                    planned=self.planned,
                    epochs_planned=self.planned * self.epochs,
                    epochs_expected=self.epochs_expected,
                    best=self.best,
                )
                unfinished = []
                for trial in trials:
                    last = trial.last_result or {}
                    # A diverged trial's last report is the epoch that diverged: MLflow has the ones before.
                    epochs = int(last.get(M.EPOCH, 0)) - (last.get(STATUS) == str(Status.DIVERGED))
                    if trial.status in ("TERMINATED", "ERROR"):
                        word = str(
                            final_status(
                                last,
                                errored=trial.status == "ERROR",
                                planned_epochs=self.epochs,
                                error=error_trace(trial) if trial.status == "ERROR" else None,
                            )
                        )
                    else:
                        word = "pending" if trial.status == "PENDING" else "running"
                        unfinished.append(epochs)
                    now.counts[word] = now.counts.get(word, 0) + 1
                    now.epochs_done += epochs
                not_created = max(0, self.planned - len(trials))  # a searcher makes trials as they start
                now.counts["pending"] = now.counts.get("pending", 0) + not_created
                now.epochs_left = standing.epochs_left(self.epochs, unfinished, not_created)
                self.epoch_times = self.epoch_times[-10_000:]
                now.epochs_per_s = standing.pace(self.epoch_times)
                standing.estimate(now)
                return now

            def _say(self, text: str) -> None:
                elapsed = time.time() - self.start
                print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {text}", flush=True)

            def on_trial_start(self, iteration, trials, trial, **info):
                self._say(f"start     {self.namer(trial.config)}")

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if result.get(NOTICE):  # a line from the trial itself (its own output stays on its node)
                    print(result[NOTICE], file=sys.stderr, flush=True)
                if result.get(REPLAYED):  # trained before the interruption: nothing new to show
                    return
                node = result.get(NODE_ID)
                if node and self.node.get(trial.trial_id) != node:
                    self.node[trial.trial_id] = node
                    self._say(f"running   {self.namer(trial.config)} on {where(result)}")
                if result.get(STATUS) == str(Status.DIVERGED):
                    return
                self.epoch_times.append(int(time.time() * 1000))
                if self.best is None or result[M.VAL_ERROR] < self.best["val_error"]:
                    self.best = {
                        "name": self.namer(trial.config),
                        "val_error": result[M.VAL_ERROR],
                        "test_error": result.get(M.TEST_ERROR),
                        "epoch": int(result[M.EPOCH]),
                    }
                self._say(
                    f"epoch {int(result[M.EPOCH]):>3}/{self.epochs}  {self.namer(trial.config):<44} "
                    f"train err {result[M.TRAIN_ERROR]:6.2%}  val err {result[M.VAL_ERROR]:6.2%}"
                )

            def on_trial_recover(self, iteration, trials, trial, **info):
                # A failure Tune will retry (a lost node, a crashed worker): from the last checkpoint.
                epoch = int((trial.last_result or {}).get(M.EPOCH, 0))
                limit = "unlimited" if self.max_failures < 0 else str(self.max_failures)
                since = f"from its checkpoint at epoch {epoch}" if epoch else "from the start"
                error = error_line(error_trace(trial))
                self._say(
                    f"retrying  {self.namer(trial.config)} (was on {where(trial.last_result) or 'an unknown node'}; "
                    f"failure {trial.num_failures} of {limit} allowed{': ' + error if error else ''}) {since}"
                )

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.done += 1
                status = final_status(trial.last_result, errored=False, planned_epochs=self.epochs)
                on = f" on {where(trial.last_result)}" if where(trial.last_result) else ""
                if (trial.last_result or {}).get(REPLAYED):
                    on = " (had finished before the interruption; not trained again)"
                self._say(
                    f"{describe_status(status, int((trial.last_result or {}).get(M.EPOCH, 0)), self.stopped_by):<9} "
                    f"{self.namer(trial.config)}{on}  ({self.done} done)"
                )

            def on_trial_error(self, iteration, trials, trial, **info):
                self.done += 1
                trace = error_trace(trial)
                status = final_status(trial.last_result, errored=True, planned_epochs=self.epochs, error=trace)
                self._say(
                    f"{status:<9} {self.namer(trial.config)}: {error_line(trace) or 'no error recorded'}  "
                    f"({self.done} done; trace in {trial.path}/error.txt)"
                )

        return _Progress(*args, **kwargs)


def table_rows(results, namer: TrialNamer, epochs: int, stopped_by: str) -> list[dict]:
    """One row per trial of a Tune ResultGrid (trial_table.row)."""
    rows = []
    for result in results:
        config, last = result.config or {}, result.metrics or {}
        df = result.metrics_dataframe
        history = df[df[M.VAL_ERROR].notna()].to_dict("records") if df is not None and M.VAL_ERROR in df else []
        status = final_status(
            last, errored=result.error is not None, planned_epochs=epochs, error=str(result.error or "")
        )
        if result.error is None and was_interrupted(last):
            status = Status.INTERRUPTED
        name = namer(config) if M.EPOCH in last else _folder_name(result.path)
        rows.append(
            trial_table.row(
                name,
                describe_status(status, int(last.get(M.EPOCH, 0)), stopped_by),
                int(last.get(M.EPOCH, 0)),
                history,
                node=where(last),
            )
        )
    return rows


def _folder_name(path: str | None) -> str:
    """A trial that never reported an epoch may have no (or a partial) config in Ray's results: its
    folder, named by TrialDirName, still says which trial it is (Tune's ids are `xxxxx_NNNNN`)."""
    return path.rstrip("/").rsplit("/", 1)[-1].rsplit("_", 2)[0] if path else "?"
