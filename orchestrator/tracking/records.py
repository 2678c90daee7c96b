"""A sweep read back from MLflow alone: its parent run, sweep file, plan and trials with their
per-epoch histories. `status` and `report` use it, so they work against a remote tracking
server from any machine, with no Tune folder at hand."""

from __future__ import annotations

import ast
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import trial_table
from orchestrator.vocabulary import (
    LAYER_RESPONSES,
    PARENT_TAG,
    TAG_ERROR,
    TAG_PREDICTED_WALL,
    TAG_RETIRED,
    TAG_ROLE,
    TAG_STATUS,
    TAG_STOPPED_AT,
    TAG_WALL,
)
from resnet_core import metrics as M

__all__ = ["SweepNotFound", "SweepRecord", "SweepUnreadable", "TrialRecord", "find_sweep", "open_record", "read_sweep"]

# What the report draws and tabulates (epoch_seconds: the measured training time of its cost view).
HISTORY_KEYS = (M.ITERATION, M.TRAIN_ERROR, M.VAL_ERROR, M.TEST_ERROR, M.EPOCH_SECONDS)
# An epoch without these is still whole: the errors stand without them (iteration: runs logged before it).
OPTIONAL_KEYS = (M.ITERATION, M.EPOCH_SECONDS)
TIMESTAMP = "timestamp"
MAX_RUNS = 10_000  # a sweep has at most 10,000 trials (spec.py)


class SweepNotFound(Exception):
    """No sweep of that name in the tracking store (exit 2: nothing to read)."""


class SweepUnreadable(Exception):
    """The sweep is there but cannot be read whole (exit 1)."""


@dataclass
class TrialRecord:
    run_id: str
    name: str
    status: str  # the status tag (resnet_core.metrics.Status), "running" while it trains
    config: dict  # the trial's flat config, typed again from MLflow's string params
    history: list[dict] = field(default_factory=list)  # one dict per epoch: epoch + HISTORY_KEYS
    stopped_at: int | None = None
    error: str = ""  # a failed trial's exception, one line
    responses: list[float] | None = None  # 2015 Fig. 7, logged when the trial ends
    final: dict[str, float] = field(default_factory=dict)  # metrics.FINAL_METRICS of the final model (10-crop)

    @property
    def epochs(self) -> int:
        return max((h[M.EPOCH] for h in self.history), default=0)

    @property
    def best(self) -> dict | None:
        return trial_table.best_epoch(self.history)

    @property
    def final_train_error(self) -> float | None:
        return trial_table.final_train_error(self.history)


@dataclass
class SweepRecord:
    name: str
    experiment: str
    parent_id: str
    status: str
    spec_text: str
    plan: dict  # plan.json as `run` logged it
    trials: list[TrialRecord]
    retired: int = 0  # runs of trials the sweep file no longer has (`run --extend`), left out of ``trials``
    # What `run` predicted (`plan --calibrate`'s rates) and took to its report, both recorded by
    # one `run` where it had a prediction (none after `run --extend`).
    predicted_wall_s: float | None = None
    wall_s: float | None = None

    def retired_line(self) -> str | None:
        """What `status` and `report` say about the trials they leave out."""
        if not self.retired:
            return None
        return (
            f"{self.retired} earlier trial(s) of this sweep are no longer in its file (`run --extend`): "
            f"left out here, their runs kept in MLflow (tag {TAG_RETIRED})"
        )


def _typed(text: str):
    """MLflow keeps params as text: 0.1, True, (0.5, 0.75), None, A → their values."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def find_sweep(client, name: str, experiment: str | None = None):
    """The parent run of the sweep named ``name`` (the name `run` printed; the newest when several
    experiments hold one), searched in ``experiment`` or in every experiment."""
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise SweepNotFound(f"no MLflow experiment named {experiment!r}")
        experiments = [exp]
    else:
        experiments = client.search_experiments(max_results=50_000)
    ids = [e.experiment_id for e in experiments]
    found = []
    for i in range(0, len(ids), 100):  # search_runs takes at most 100 experiments at once
        found += client.search_runs(
            ids[i : i + 100],
            f"tags.`{TAG_ROLE}` = 'sweep' and attributes.run_name = {_quoted(name)}",
            order_by=["attributes.start_time DESC"],
            max_results=100,
        )
    if not found:
        where = f"experiment {experiment!r}" if experiment else f"any of the {len(ids)} experiments"
        raise SweepNotFound(
            f"no sweep named {name!r} in {where} of this tracking store (the name `resnet-sweep run` "
            f"printed, e.g. quickstart or quickstart-2)"
        )
    found.sort(key=lambda r: r.info.start_time, reverse=True)
    if len(found) > 1:
        names = {e.experiment_id: e.name for e in experiments}
        others = ", ".join(sorted({names[r.info.experiment_id] for r in found[1:]}))
        print(
            f"note: {len(found)} sweeps are named {name!r}; using the newest, in experiment "
            f"{names[found[0].info.experiment_id]!r} (others in {others}; choose with --experiment)",
            file=sys.stderr,
        )
    return found[0], {e.experiment_id: e.name for e in experiments}[found[0].info.experiment_id]


def _artifact_text(client, run_id: str, path: str) -> str | None:
    """A text artifact of the run, or None when the run has none of that name (a trial that has
    not ended); a store that fails to answer raises."""
    if path not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as folder:
        return Path(client.download_artifacts(run_id, path, folder)).read_text()


def _required_artifact(client, info, path: str) -> str:
    text = _artifact_text(client, info.run_id, path)
    if text is None:
        raise SweepUnreadable(
            f"the sweep's MLflow run {info.run_name} ({info.run_id}) has no {path} artifact: it was "
            f"not made by `resnet-sweep run`, or its artifacts are not readable from here"
        )
    return text


def _history(client, run_id: str, keys: tuple[str, ...]) -> list[dict]:
    """Per-epoch records from MLflow's metric histories (the step of every point is its epoch).
    Only whole epochs: a running trial may log one between two of these reads."""
    epochs: dict[int, dict] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            record = epochs.setdefault(m.step, {M.EPOCH: m.step})
            record[key] = m.value
            if key == M.VAL_ERROR:
                record[TIMESTAMP] = m.timestamp  # when the driver logged the epoch (ms): the pace of `status`
    return [epochs[e] for e in sorted(epochs) if all(k in epochs[e] for k in keys if k not in OPTIONAL_KEYS)]


def read_sweep(
    client, parent, experiment: str, *, keys: tuple[str, ...] | None = None, responses: bool = True
) -> SweepRecord:
    """The sweep under ``parent`` with its trials sorted by name (a stable order: the report of
    the same runs is the same file, read from any store). ``keys``: the metric histories to read
    (default: what the report shows, and the sweep's own metric)."""
    from orchestrator.sweepfile.spec import parse_spec

    info = parent.info
    spec_text = _required_artifact(client, info, "sweep.yaml")
    plan = json.loads(_required_artifact(client, info, "plan.json"))
    if keys is None:
        metric = parse_spec(spec_text, source="sweep.yaml").spec.metric.name
        keys = HISTORY_KEYS + ((metric,) if metric not in HISTORY_KEYS else ())
    runs = client.search_runs([info.experiment_id], f"tags.`{PARENT_TAG}` = '{info.run_id}'", max_results=MAX_RUNS)
    if len(runs) > 50:  # a few requests per trial: say why a big sweep takes a moment
        print(f"reading {len(runs)} trials of {info.run_name} from MLflow …", file=sys.stderr, flush=True)
    trials, retired = [], 0
    for run in runs:
        tags = run.data.tags
        if tags.get(TAG_RETIRED) == "true":
            retired += 1
            continue
        stopped = tags.get(TAG_STOPPED_AT)
        trial = TrialRecord(
            run_id=run.info.run_id,
            name=run.info.run_name,
            status=tags.get(TAG_STATUS, "running"),
            config={k: _typed(v) for k, v in run.data.params.items()},
            history=_history(client, run.info.run_id, keys),
            stopped_at=int(stopped) if stopped else None,
            error=tags.get(TAG_ERROR, ""),
            final={key: run.data.metrics[key] for key in M.FINAL_METRICS if key in run.data.metrics},
        )
        if responses and run.info.status != "RUNNING":
            text = _artifact_text(client, run.info.run_id, "layer_responses.json")
            trial.responses = json.loads(text)[LAYER_RESPONSES] if text else None
        trials.append(trial)
    trials.sort(key=lambda t: t.name)
    return SweepRecord(
        name=info.run_name,
        experiment=experiment,
        parent_id=info.run_id,
        status=parent.data.tags.get(TAG_STATUS, ""),
        spec_text=spec_text,
        plan=plan,
        trials=trials,
        retired=retired,
        predicted_wall_s=float(p) if (p := parent.data.tags.get(TAG_PREDICTED_WALL)) else None,
        wall_s=float(wall) if (wall := parent.data.tags.get(TAG_WALL)) else None,
    )


def open_record(tracking_uri: str | None, name: str, experiment: str | None = None, **read) -> tuple:
    """(client, SweepRecord) of the sweep ``name`` in the store at ``tracking_uri`` (default
    ./mlflow.db). Raises SweepNotFound for a store or sweep that is not there (nothing to read) and
    TrackingUnavailableError for one that does not answer."""
    from orchestrator.tracking.mlflow_store import (
        TrackingUnavailableError,
        check_scheme,
        check_tracking_uri,
        default_tracking_uri,
        open_client,
        use_tracking_uri,
    )

    uri = use_tracking_uri(tracking_uri or default_tracking_uri())
    try:
        scheme = check_scheme(uri)
    except TrackingUnavailableError as err:
        raise SweepNotFound(f"--tracking-uri: {err}") from None
    if scheme == "sqlite" and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise SweepNotFound(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}; pass the sweep's --tracking-uri "
            f"(run from the folder the sweep ran in, or give its sqlite:///PATH.db or http://HOST:PORT)"
        )
    check_tracking_uri(uri)
    client = open_client(uri)
    parent, experiment_name = find_sweep(client, name, experiment)
    return client, read_sweep(client, parent, experiment_name, **read)
