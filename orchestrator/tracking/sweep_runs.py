"""A sweep's MLflow runs: one parent run per sweep, one child run per trial, and the writes a
trial's life makes to its run (its config as params, its epochs as metrics, the nodes it ran on,
its end: status, best epoch, error, figures).

Runs are found again by their tags, so a resumed sweep reuses its parent and child runs instead of
duplicating them (upstream's ray#19909, #36257 …), and a trial's history split over two runs is
merged into one. Every write goes through one MlflowWriter (in order, off the caller's thread, held
while MLflow is down), which also owns the state below. Trials are told as plain values (id,
config, results), so Tune's objects stay with the Tune callback (running/tracker.py).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from orchestrator.sweepfile.space import resolve_trial
from orchestrator.tracking.login import receive
from orchestrator.tracking.mlflow_store import open_client, redact
from orchestrator.tracking.writer import MlflowWriter
from orchestrator.vocabulary import (
    DEVICE,
    EARLIER_EPOCHS,
    FINAL_STATUSES,
    HOSTNAME,
    LAYER_RESPONSES,
    NODE_ID,
    PARENT_TAG,
    SPEED,
    STATUS,
    TAG_BEST_EPOCH,
    TAG_DEVICE,
    TAG_DUPLICATE_OF,
    TAG_ERROR,
    TAG_HOST,
    TAG_NODE_ID,
    TAG_NODES,
    TAG_ROLE,
    TAG_SPEED,
    TAG_STATUS,
    TAG_STOPPED_AT,
    TAG_STORAGE,
    TAG_SWEEP,
    TAG_TRIAL_ID,
    error_line,
    final_status,
)
from resnet_core import metrics as M
from resnet_core.metrics import Status

__all__ = ["END_WAIT_S", "Figures", "SweepRuns"]

END_WAIT_S = 120  # at the end of a sweep, how long held writes wait for MLflow to come back


class Figures(Protocol):
    """What draws a trial's figures (orchestrator.report.figures: a layer above this one)."""

    def learning_curve(self, curves: dict[str, list[tuple[int, float]]]) -> Any: ...

    def layer_responses(self, stds: list[float]) -> Any: ...


def _best_point(history):
    """The best point of an MLflow val_error history (M.best_epoch's rule)."""
    return M.best_epoch(history, val_error=lambda m: m.value, epoch=lambda m: m.step)


class SweepRuns:
    """The sweep's parent run and its trials' child runs in MLflow, and the writes to them.

    ``figures`` returns what draws a trial's figures, called when the first is drawn (matplotlib
    is slow to import). ``client``: an MlflowClient (tests give a fake); else one is opened for
    ``tracking_uri`` when first needed, with the login the sweep's driver shared."""

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
        figures: Callable[[], Figures],
        client: Any = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_key = sweep_key
        self.sweep_name = sweep_name
        self.tags = tags
        self.artifacts = artifacts  # file name → text, logged on the parent run
        self.trial_namer = trial_namer
        self.planned_epochs = planned_epochs
        self.figures = figures
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id → MLflow run id
        self.names: set[str] = set()  # child run names in use (kept unique)
        self.logged_epoch: dict[str, int] = {}  # run id → last epoch logged
        self.nodes: dict[str, list[str]] = {}  # run id → node ids it ran on
        self._client = client
        # The writer's thread makes every write and owns the state above (runs, names,
        # logged_epoch, nodes): two threads deciding a trial's run made two runs.
        self.writer = MlflowWriter(on_outage=self._forget_logged_epochs)
        self.points_sent = self.runs_created = self.runs_ended = 0  # what this process wrote (sync's summary)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            receive(self.sweep_key)  # with ray://, the login this sweep's driver shared
            self._client = open_client(self.tracking_uri)
        return self._client

    def _forget_logged_epochs(self) -> None:
        # What reached the server before a failed write is re-read on replay, never sent twice.
        self.logged_epoch.clear()

    # --- state kept with the Tune experiment ---------------------------------------------------
    def state(self) -> dict:
        """The parent run and the trial → run map, once the writes handed over before are made:
        a driver killed after the state was saved has nothing in it that MLflow lacks (resume
        relies on it)."""
        return self.writer.run(self._state) or {"parent_id": self.parent_id, "runs": {}}

    def _state(self) -> dict:
        return {"parent_id": self.parent_id, "runs": dict(self.runs)}

    def restore(self, state: dict) -> None:
        self.parent_id = state.get("parent_id")
        self.runs.update(state.get("runs", {}))

    # --- the sweep's parent run ---------------------------------------------------------------------
    def start_sweep(self) -> None:
        """Finds the sweep's runs, or creates its parent run (with its tags and artifacts), and
        marks the parent running."""
        client = self.client
        if not self.find_runs():
            run = client.create_run(
                self.experiment_id,
                run_name=self.sweep_name,
                tags={TAG_SWEEP: self.sweep_key, TAG_ROLE: "sweep", TAG_STATUS: str(Status.RUNNING), **self.tags},
            )
            self.parent_id = run.info.run_id
            for name, text in self.artifacts.items():
                client.log_text(self.parent_id, text, name)
        else:
            client.update_run(self.parent_id, status="RUNNING")
            client.set_tag(self.parent_id, TAG_STATUS, str(Status.RUNNING))

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:  # created a moment ago by another sweep (a second terminal)
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def find_runs(self) -> bool:
        """Find the sweep's parent run and rebuild the trial → run map from the child runs' tags
        (the persisted state may be lost or stale, or held by a driver elsewhere); False when the
        sweep has no parent run yet."""
        client = self.client
        self.experiment_id = self._experiment_id()
        if self.parent_id is None:
            found = client.search_runs(
                [self.experiment_id],
                f"tags.`{TAG_SWEEP}` = '{self.sweep_key}' and tags.`{TAG_ROLE}` = 'sweep'",
                max_results=1,
            )
            self.parent_id = found[0].info.run_id if found else None
        if self.parent_id is None:
            return False
        by_trial: dict[str, list] = {}
        for run in client.search_runs(
            [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_id}'", max_results=10000
        ):
            self.names.add(run.info.run_name)
            if trial_id := run.data.tags.get(TAG_TRIAL_ID):
                by_trial.setdefault(trial_id, []).append(run)
        for trial_id, runs in by_trial.items():
            self.runs[trial_id] = self._merge(runs) if len(runs) > 1 else runs[0].info.run_id
        return True

    def _merge(self, runs: list) -> str:
        """One trial's history split over two runs (a store written by an older version, or a
        create MLflow made twice): the first run takes the points it lacks and, when only the other
        ended, its end; the other is deleted (MLflow keeps it restorable) and named in one line."""
        from mlflow.entities import Metric, RunTag

        runs = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
        keep, extras = runs[0], runs[1:]
        kept = keep.info.run_id
        ended = keep.data.tags.get(TAG_STATUS) in FINAL_STATUSES
        for extra in extras:
            other = extra.info.run_id
            for key in extra.data.metrics:
                have = {m.step for m in self.client.get_metric_history(kept, key)}
                missing = [
                    Metric(key, m.value, m.timestamp, m.step)
                    for m in self.client.get_metric_history(other, key)
                    if m.step not in have
                ]
                for i in range(0, len(missing), 1000):
                    self.client.log_batch(kept, metrics=missing[i : i + 1000])
            if not ended and extra.data.tags.get(TAG_STATUS) in FINAL_STATUSES:
                tags = {k: v for k, v in extra.data.tags.items() if k in (TAG_ERROR, TAG_STOPPED_AT, TAG_STATUS)}
                if best := self._best_epoch(kept):  # of the merged history, not of either half
                    tags[TAG_BEST_EPOCH] = best
                self.client.set_terminated(kept, extra.info.status)
                self.client.log_batch(kept, tags=[RunTag(k, v) for k, v in tags.items()])
                self._log_figures(kept, [])
                ended = True
            self.client.set_tag(other, TAG_DUPLICATE_OF, kept)
            if extra.info.status == "RUNNING":
                self.client.set_terminated(other, "KILLED")
            self.client.delete_run(other)
            print(
                f"note: trial {extra.data.tags.get(TAG_TRIAL_ID)} had a second MLflow run, {extra.info.run_name} "
                f"({other}); its points are merged into {keep.info.run_name} ({kept}) and it is deleted "
                f"(`mlflow runs restore --run-id {other}` brings it back)",
                file=sys.stderr,
                flush=True,
            )
        return kept

    def parent_ended(self) -> bool:
        return self.client.get_run(self.parent_id).info.status != "RUNNING"

    # --- one child run per trial ----------------------------------------------------------------------
    def _run_for(self, trial_id: str, config: dict) -> str:
        run_id = self.runs.get(trial_id)
        if run_id is not None:
            return run_id
        from mlflow.entities import Param

        run_id = self._find_child(trial_id) or self._create_child(trial_id, config)
        # Logged again on a run found after a lost answer: the same values, so no change.
        params = [Param(k, str(v)) for k, v in sorted(self._config(config).items())]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i : i + 100])
        self.runs[trial_id] = run_id  # only now: a failed write above is replayed in full
        return run_id

    def _create_child(self, trial_id: str, config: dict) -> str:
        name, k = self.trial_namer(config), 2
        base = name
        while name in self.names:
            name, k = f"{base}-{k}", k + 1
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                PARENT_TAG: self.parent_id,
                TAG_SWEEP: self.sweep_key,
                TAG_ROLE: "trial",
                TAG_TRIAL_ID: trial_id,
                TAG_STATUS: str(Status.RUNNING),
            },
        )
        self.names.add(name)
        self.runs_created += 1
        return run.info.run_id

    def _find_child(self, trial_id: str) -> str | None:
        """A run created by a request whose answer was lost (server killed midway) is found, not
        created twice."""
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.`{TAG_TRIAL_ID}` = '{trial_id}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    @staticmethod
    def _config(config: dict) -> dict:
        """The trial's full, resolved flat config (Optuna trials carry only what they draw)."""
        try:
            return resolve_trial(config, {})
        except ValueError:  # an invalid draw: log what was drawn; the trial fails and says why
            return dict(config)

    def _is_final(self, run_id: str) -> bool:
        """Finished runs stay as they are when a resumed sweep meets their trial again."""
        return self.client.get_run(run_id).data.tags.get(TAG_STATUS) in FINAL_STATUSES

    def start_trial(self, trial_id: str, config: dict) -> None:
        """The trial's run, made (or found) and marked running unless it already ended."""
        self.writer.submit(self._start, trial_id, config)

    def _start(self, trial_id: str, config: dict) -> None:
        run_id = self._run_for(trial_id, config)
        if not self._is_final(run_id):  # new, or continued after an interruption or a failure
            self.client.update_run(run_id, "RUNNING")
            self.client.set_tag(run_id, TAG_STATUS, str(Status.RUNNING))

    def _last_logged(self, run_id: str) -> int:
        if run_id not in self.logged_epoch:
            history = self.client.get_metric_history(run_id, M.VAL_ERROR)
            self.logged_epoch[run_id] = max((m.step for m in history), default=0)
        return self.logged_epoch[run_id]

    def log_result(self, trial_id: str, config: dict, result: dict) -> None:
        """A result the trial reported: the node it ran on, and the epochs its run lacks."""
        self.writer.submit(self._log_result, trial_id, config, result)

    def _log_result(self, trial_id: str, config: dict, result: dict) -> None:
        from mlflow.entities import Metric

        run_id = self._run_for(trial_id, config)
        self._log_node(run_id, result)
        # A trial resumed from an older checkpoint re-reports epochs MLflow already has: the
        # trainer reproduces them exactly, so they are skipped to keep each history continuous.
        # One resumed from a newer one sends the epochs before it, for those MLflow lacks.
        records = json.loads(result.get(EARLIER_EPOCHS) or "[]")
        if result.get(STATUS) != str(Status.DIVERGED):  # a diverged epoch has no metrics to log
            records.append(result)
        now, last = int(time.time() * 1000), self._last_logged(run_id)
        epochs = []
        for record in records:
            epoch = int(record.get(M.EPOCH, 0))
            if epoch > last:
                epochs.append(
                    (
                        epoch,
                        [
                            Metric(key, float(record[key]), now, epoch)
                            for key in M.METRICS + M.FINAL_METRICS
                            if key in record
                        ],
                    )
                )
                last = epoch
        # Whole epochs per batch (MLflow takes at most 1000 metrics; a batch is one transaction),
        # each counted as logged once written: a replay after a failure sends only what is missing.
        batch: list = []
        for i, (epoch, metrics) in enumerate(epochs):
            batch += metrics
            if i + 1 == len(epochs) or len(batch) + len(epochs[i + 1][1]) > 1000:
                self.client.log_batch(run_id, metrics=batch)
                self.points_sent += len(batch)
                self.logged_epoch[run_id], batch = epoch, []

    def _log_node(self, run_id: str, result: dict) -> None:
        node = result.get(NODE_ID)
        if not node:
            return
        if run_id not in self.nodes:  # a resumed sweep keeps the nodes logged before
            logged = self.client.get_run(run_id).data.tags.get(TAG_NODES)
            self.nodes[run_id] = logged.split(",") if logged else []
        if self.nodes[run_id][-1:] == [node]:
            return
        from mlflow.entities import RunTag

        nodes = [*self.nodes[run_id], node]
        tags = {
            TAG_NODE_ID: node,
            TAG_HOST: str(result.get(HOSTNAME, "")),
            TAG_NODES: ",".join(nodes),
            **{tag: str(result[key]) for tag, key in ((TAG_DEVICE, DEVICE), (TAG_SPEED, SPEED)) if key in result},
        }
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.nodes[run_id] = nodes

    def end_trial(
        self, trial_id: str, config: dict, result: dict, *, error_trace: Callable[[], str] | None = None
    ) -> None:
        """The trial's end, from its last ``result``: its status, best epoch, layer responses and
        figures. ``error_trace`` (a failed trial's, read when its end is written) makes it failed.
        Returns once it is written (or held) after the writes before it: once the progress line
        says a trial ended, MLflow says so too."""
        self.writer.submit(self._finish, trial_id, config, result, error_trace, wait=True)

    def _finish(self, trial_id: str, config: dict, result: dict, error_trace: Callable[[], str] | None) -> None:
        run_id = self._run_for(trial_id, config)
        if self._is_final(run_id):
            return
        failed = error_trace is not None
        epoch = int(result.get(M.EPOCH, 0))
        trace = redact(error_trace() or "") if failed else ""
        status = final_status(result, errored=failed, planned_epochs=self.planned_epochs, error=trace)
        if self._ended_as(run_id, status):  # already recorded (`sync` run twice)
            return
        tags = {TAG_STATUS: str(status)}
        if trace:
            tags[TAG_ERROR] = error_line(trace)
            self.client.log_text(run_id, trace, "error.txt")
        if status == Status.STOPPED_EARLY:
            tags[TAG_STOPPED_AT] = str(epoch)
        if best := self._best_epoch(run_id):
            tags[TAG_BEST_EPOCH] = best
        responses = result.get(LAYER_RESPONSES)
        if responses:  # data the report reads: written with the trial's end
            self.client.log_dict(run_id, {LAYER_RESPONSES: list(responses)}, "layer_responses.json")
        # The figures are views of what is logged: drawn after this write, which Tune's loop waits
        # for (about 0.15 s a trial).
        self.writer.submit(self._log_figures, run_id, list(responses or []))
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
        # The status tag goes last: a run that has it is complete (see _is_final; its figures
        # may follow a moment later). Counted then: a replay of a write lost midway counts once.
        for key, value in sorted(tags.items(), key=lambda kv: kv[0] == TAG_STATUS):
            self.client.set_tag(run_id, key, value)
        self.runs_ended += 1

    def _best_epoch(self, run_id: str) -> str | None:
        """The best epoch of a run's val_error history (M.best_epoch)."""
        best = _best_point(self.client.get_metric_history(run_id, M.VAL_ERROR))
        return None if best is None else str(best.step)

    def _ended_as(self, run_id: str, status: Status) -> bool:
        run = self.client.get_run(run_id)
        return run.info.status != "RUNNING" and run.data.tags.get(TAG_STATUS) == str(status)

    def _log_figures(self, run_id: str, responses: list[float]) -> None:
        curves = {
            key: self.client.get_metric_history(run_id, key) for key in (M.TRAIN_ERROR, M.VAL_ERROR, M.TEST_ERROR)
        }
        if any(curves.values()):
            png = self.figures().learning_curve({k: [(m.step, m.value) for m in v] for k, v in curves.items()})
            self.client.log_image(run_id, png, "learning_curve.png")
        if responses:
            self.client.log_image(run_id, self.figures().layer_responses(responses), "layer_responses.png")

    def _interrupt(self, trial_id: str) -> None:
        """A trial the sweep left midway (Ctrl-C): KILLED in MLflow, tagged until `resume`."""
        run_id = self.runs.get(trial_id)
        if run_id is not None and not self._is_final(run_id) and not self._ended_as(run_id, Status.INTERRUPTED):
            self.client.set_terminated(run_id, "KILLED")
            self.client.set_tag(run_id, TAG_STATUS, str(Status.INTERRUPTED))

    # --- the sweep's end ---------------------------------------------------------------------------
    def _summarize(self) -> None:
        """The best trial (lowest val error, chosen on val) on the parent run, for the runs table."""
        from mlflow.entities import Metric, RunTag

        best = None
        for run_id in self.runs.values():
            top = _best_point(self.client.get_metric_history(run_id, M.VAL_ERROR))
            if top is not None:
                if best is None or top.value < best[0]:
                    best = (top.value, top.step, run_id)
        if best is None:
            return
        value, epoch, run_id = best
        name = self.client.get_run(run_id).info.run_name
        parent = self.client.get_run(self.parent_id).data
        if parent.tags.get("best_trial") == name and parent.metrics.get(M.VAL_ERROR) == value:
            return  # already there: logging it again would add a point to the parent's history
        test = [m.value for m in self.client.get_metric_history(run_id, M.TEST_ERROR) if m.step == epoch]
        now = int(time.time() * 1000)
        metrics = [Metric(M.VAL_ERROR, value, now, 0)]
        if test:
            metrics.append(Metric(M.TEST_ERROR, test[0], now, 0))
        # One batch, one transaction: a replay after a lost answer finds the tag and adds no point.
        self.client.log_batch(self.parent_id, metrics=metrics, tags=[RunTag("best_trial", name)])

    def end_sweep(self, interrupted: list[str], status: Status | None, *, wait_s: float = END_WAIT_S) -> int:
        """The sweep's last writes: the best trial, the trials left midway (their ids), the
        parent's status (None: left as it is); what MLflow does not take is retried for
        ``wait_s``. Returns the writes MLflow did not take."""
        return self.writer.run(self._end_sweep, interrupted, status, wait_s) or 0

    def _end_sweep(self, interrupted: list[str], status: Status | None, wait_s: float) -> int:
        self.writer.write_now(self._summarize)
        for trial_id in interrupted:
            self.writer.write_now(self._interrupt, trial_id)
        if status is not None:
            self.writer.write_now(self._end_parent, status)
        if not self.writer.held:
            return 0
        sync = f"resnet-sweep sync {shlex.quote(self.tags.get(TAG_STORAGE, self.sweep_name))}"
        if wait_s > 0:
            print(
                f"MLflow does not answer: retrying {self.writer.held} writes for up to {wait_s / 60:g} minutes "
                f"(the results are safe in the sweep's folder; `{sync}` sends them later)",
                file=sys.stderr,
                flush=True,
            )
        left = self.writer.flush(wait_s)
        if left:
            print(
                f"warning: {left} MLflow writes were not delivered; send them with `{sync}` once MLflow answers",
                file=sys.stderr,
                flush=True,
            )
        return left

    def _end_parent(self, status: Status) -> None:
        run = self.client.get_run(self.parent_id)
        if run.data.tags.get(TAG_STATUS) != str(status) or run.info.status == "RUNNING":
            self.client.set_tag(self.parent_id, TAG_STATUS, str(status))
            self.client.set_terminated(self.parent_id, "FINISHED" if status == Status.COMPLETED else "KILLED")
