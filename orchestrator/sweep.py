"""Running a sweep: Ray Tune with the planned trials (or Optuna), ASHA, per-epoch checkpoints,
MLflow tracking in the driver, live progress and the final table of every trial."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from resnet_core import metrics as M
from resnet_core.data import DataUnavailableError, load_splits
from resnet_core.errors import ConfigError
from resnet_core.metrics import Status
from resnet_core.train import RunConfig

from .space import Plan, make_plan, optuna_space, resolve_trial, trial_name
from .spec import ParsedSpec, SpecError, parse_spec
from .tracking import SweepTracker, check_tracking_uri, default_tracking_uri, git_commit, normalize_tracking_uri
from .trainable import STATUS, final_status, train_trial

__all__ = ["SweepError", "prepare_sweep", "resume_sweep", "run_sweep", "SPEC_FILE"]

SPEC_FILE = "sweep.yaml"  # the sweep file, saved in the experiment folder for `resume`
TRACKING_FILE = "tracking.json"  # where its MLflow runs are, for `resume`
SMOKE_EPOCHS, SMOKE_IMAGES, SMOKE_TRIALS = 2, 256, 4


class SweepError(Exception):
    """A runtime failure before or while running (exit code 1)."""


@dataclass
class Prepared:
    parsed: ParsedSpec
    plan: Plan
    storage_path: str
    name: str  # the Tune experiment's folder name
    tracking_uri: str
    experiment: str


def default_storage_path() -> str:
    return str(Path.cwd() / "ray_results")


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _smoke(parsed: ParsedSpec) -> None:
    """--smoke-test: the same sweep, tiny: 2 epochs on 256 images, at most 4 trials."""
    spec = parsed.spec
    spec.train.pop("iterations", None)
    spec.train["epochs"] = min(spec.train.get("epochs") or SMOKE_EPOCHS, SMOKE_EPOCHS)
    spec.dataset["train_limit"] = min(spec.dataset.get("train_limit") or SMOKE_IMAGES, SMOKE_IMAGES)
    for key in ("train.epochs", "train.iterations", "dataset.train_limit"):
        spec.search.space.pop(key, None)
    spec.scheduler.grace_period = 1
    spec.scheduler.max_t = spec.train["epochs"]
    if spec.search.algorithm != "grid":
        spec.search.num_samples = min(spec.search.num_samples, SMOKE_TRIALS)


def check_resources(spec) -> None:
    """Per-trial resources must fit one node of this machine (local runs)."""
    import torch

    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    if spec.resources.gpu > gpus:
        raise SpecError("resources.gpu", f"{spec.resources.gpu:g} GPUs per trial, but this machine has {gpus}")
    if spec.resources.cpu > cpus:
        raise SpecError("resources.cpu", f"{spec.resources.cpu:g} CPUs per trial, but this machine has {cpus}")


def prepare_sweep(
    parsed: ParsedSpec,
    *,
    address: str | None = None,
    storage_path: str | None = None,
    tracking_uri: str | None = None,
    smoke_test: bool = False,
) -> Prepared:
    """Validate everything that can be checked before Ray starts; raises SpecError (bad input)
    or SweepError (data or tracking unavailable)."""
    if smoke_test:
        _smoke(parsed)
    plan = make_plan(parsed, with_models=False)
    if smoke_test and plan.trials is not None:
        plan.trials = plan.trials[:SMOKE_TRIALS]
        plan.num_trials = len(plan.trials)
    spec = parsed.spec
    uri = normalize_tracking_uri(tracking_uri or spec.tracking.tracking_uri or default_tracking_uri())
    try:
        check_tracking_uri(uri)
    except Exception as err:
        raise SpecError("tracking.tracking_uri", str(err)) from None
    storage = storage_path or spec.storage_path or default_storage_path()
    if _is_local(storage):
        storage = str(Path(storage.removeprefix("file://")).expanduser().resolve())
    # Fail fast on data: the driver loads (or downloads into the cache) what trials will need.
    first = RunConfig.from_flat(plan.configs[0])
    try:
        load_splits(first.dataset)
    except DataUnavailableError as err:
        raise SweepError(str(err)) from None
    if address is None:
        check_resources(spec)
    name = spec.name
    if _is_local(storage):
        k = 2
        while (Path(storage) / name).exists():
            name, k = f"{spec.name}-{k}", k + 1
    return Prepared(parsed, plan, storage, name, uri, spec.tracking.experiment or spec.name)


def saved_spec_text(parsed: ParsedSpec) -> str:
    """The sweep file kept with the experiment: the user's text, or after --smoke-test changed
    the spec in memory, the spec as it ran (so `resume` continues the same, tiny sweep)."""
    if parse_spec(parsed.text).spec == parsed.spec:
        return parsed.text
    import yaml

    header = f"# {parsed.source or 'sweep'} as run with --smoke-test\n"
    return header + yaml.safe_dump(parsed.spec.model_dump(mode="json"), sort_keys=False)


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


class Progress:
    """Live progress: one line per trial epoch and per status change (a Tune callback)."""

    def __new__(cls, *args, **kwargs):
        from ray.tune import Callback

        # Built lazily so importing this module does not import Ray.
        class _Progress(Callback):
            def __init__(self, namer: TrialNamer, epochs: int, stopped_by: str) -> None:
                self.namer, self.epochs, self.start = namer, epochs, time.time()
                self.stopped_by = stopped_by
                self.done = 0

            def _say(self, text: str) -> None:
                elapsed = time.time() - self.start
                print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {text}", flush=True)

            def on_trial_start(self, iteration, trials, trial, **info):
                self._say(f"start     {self.namer(trial.config)}")

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if result.get(STATUS) == str(Status.DIVERGED):
                    return
                self._say(
                    f"epoch {int(result[M.EPOCH]):>3}/{self.epochs}  {self.namer(trial.config):<44} "
                    f"train err {result[M.TRAIN_ERROR]:6.2%}  val err {result[M.VAL_ERROR]:6.2%}"
                )

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.done += 1
                status = final_status(trial.last_result, errored=False, planned_epochs=self.epochs)
                self._say(f"{_describe_status(status, trial.last_result, self.stopped_by):<9} {self.namer(trial.config)}  ({self.done} done)")

            def on_trial_error(self, iteration, trials, trial, **info):
                self.done += 1
                self._say(f"failed    {self.namer(trial.config)}  ({self.done} done; see {trial.local_path})")

        return _Progress(*args, **kwargs)


def _describe_status(status: Status, result: dict | None, stopped_by: str) -> str:
    if status == Status.STOPPED_EARLY:
        return f"stopped by {stopped_by} at epoch {int((result or {}).get(M.EPOCH, 0))}"
    return str(status)


def _stopped_by(spec) -> str:
    """Who stops trials early: the scheduler, else the sweep's epoch budget."""
    return "ASHA" if spec.scheduler.name == "asha" else "budget"


def _epoch_budget_stopper(max_epochs: int):
    from ray.tune import Stopper

    class EpochBudget(Stopper):
        """budget.max_epochs: stop the sweep once its trials have trained this many epochs."""

        def __init__(self) -> None:
            self.seen: set[tuple[str, int]] = set()

        def __call__(self, trial_id, result) -> bool:
            if M.EPOCH in result:  # each (trial, epoch) once: resumes and final results repeat them
                self.seen.add((trial_id, int(result[M.EPOCH])))
            return False

        def stop_all(self) -> bool:
            return len(self.seen) >= max_epochs

    return EpochBudget()


def _search_and_space(prep: Prepared, concurrency: int):
    from ray import tune
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    spec = prep.parsed.spec
    if spec.search.algorithm == "optuna":
        # ray#46965: with a searcher Tune keeps one pending trial at a time by default, which
        # serialises an Optuna sweep; allow as many pending trials as can run at once.
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(concurrency)
        searcher = OptunaSearch(
            space=optuna_space(prep.parsed), metric=spec.metric.name, mode=spec.metric.mode, seed=spec.search.seed
        )
        return ConcurrencyLimiter(searcher, max_concurrent=concurrency), {}
    points = [t.config for t in prep.plan.trials]
    param_space: dict[str, Any] = dict(points[0])
    for key in points[0]:
        values = {repr(p[key]): p[key] for p in points}
        if len(values) > 1:  # a placeholder domain; the points themselves are what runs
            param_space[key] = tune.choice(list(values.values()))
    return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrency), param_space


def _varying_keys(prep: Prepared) -> list[str]:
    space = list(prep.parsed.spec.search.space)
    keys = ["model.depth" if k == "model.n" else k for k in space]
    if prep.parsed.spec.search.seeds is not None:
        keys.append("train.seed")
    return keys


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    _check_reachable(address)
    try:
        _start_ray(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise SweepError(f"could not start or reach {where}: {err}") from None


def _check_reachable(address: str | None) -> None:
    """Ray retries an unreachable head for minutes; a host:port that refuses fails at once."""
    import socket

    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SpecError("--address", f"{address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise SweepError(f"no Ray cluster answers at {address} ({err}); start one with `ray start --head` or drop --address") from None


def _start_ray(address: str | None) -> None:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # One checkpoint per epoch is the design (ASHA, retries and node loss cost at most an epoch).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)


def _write_text(storage_path: str, name: str, filename: str, text: str) -> None:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
    fs.create_dir(f"{root}/{name}", recursive=True)
    with fs.open_output_stream(f"{root}/{name}/{filename}") as out:
        out.write(text.encode())


def _read_text(experiment_path: str, filename: str) -> str | None:
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path if "://" in experiment_path else str(Path(experiment_path).resolve()))
        with fs.open_input_stream(f"{root}/{filename}") as f:
            return f.read().decode()
    except (OSError, ValueError, pyarrow.ArrowException):
        return None


def run_sweep(prep: Prepared, *, address: str | None = None) -> int:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    spec, plan = prep.parsed.spec, prep.plan
    _init_ray(address)
    import ray

    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    concurrency = spec.max_concurrent or max(1, int(cluster_cpus // spec.resources.cpu))
    if spec.resources.gpu:
        concurrency = min(concurrency, max(1, int(ray.cluster_resources().get("GPU", 0) // spec.resources.gpu)))
    search_alg, param_space = _search_and_space(prep, concurrency)
    namer = TrialNamer(_varying_keys(prep))
    _write_text(prep.storage_path, prep.name, SPEC_FILE, saved_spec_text(prep.parsed))
    tracking = {"tracking_uri": prep.tracking_uri, "experiment": prep.experiment, "num_trials": plan.num_trials}
    _write_text(prep.storage_path, prep.name, TRACKING_FILE, json.dumps(tracking))

    scheduler = None
    if spec.scheduler.name == "asha":
        scheduler = ASHAScheduler(
            time_attr=M.EPOCH,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            max_t=spec.scheduler.max_t or plan.epochs_per_trial,
        )
    tracker = SweepTracker(
        tracking_uri=prep.tracking_uri,
        experiment=prep.experiment,
        sweep_key=uuid.uuid4().hex,
        sweep_name=prep.name,
        tags={
            "resnet_sweep.spec_hash": spec.spec_hash(),
            "resnet_sweep.version": version("resnet-sweep"),
            "resnet_sweep.storage": f"{prep.storage_path}/{prep.name}",
            **({"mlflow.source.git.commit": c} if (c := git_commit()) else {}),
            "mlflow.note.content": spec.description,
        },
        artifacts={SPEC_FILE: prep.parsed.text, "plan.json": plan_json(plan)},
        trial_namer=namer,
        planned_epochs=plan.epochs_per_trial,
    )
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric.name,
            mode=spec.metric.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=plan.num_trials,
            trial_name_creator=_TrialDirName(namer),
            trial_dirname_creator=_TrialDirName(namer),
            # A trial's actor is kept for the next one: no worker start-up between trials.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=prep.name,
            storage_path=prep.storage_path,
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
            checkpoint_config=_checkpoint_config(spec),
            callbacks=[tracker, Progress(namer, plan.epochs_per_trial, _stopped_by(spec))],
            stop=_epoch_budget_stopper(spec.budget.max_epochs) if spec.budget.max_epochs else None,
            verbose=0,
        ),
    )
    print(f"sweep {prep.name}: {plan.num_trials} trials, up to {plan.epochs_per_trial} epochs each, "
          f"{concurrency} at a time; results in {prep.storage_path}/{prep.name}, MLflow {prep.tracking_uri} "
          f"(experiment {prep.experiment!r})", flush=True)
    results = tuner.fit()
    return _finish(prep, results, namer, plan.epochs_per_trial, tracker, plan.num_trials)


def _checkpoint_config(spec):
    """Keep one checkpoint per trial: the latest (Tune always keeps it, for resume) and, when the
    sweep logs the best checkpoint to MLflow, the best by the sweep's metric as well."""
    from ray import tune

    if spec.tracking.log_best_checkpoint:
        return tune.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=spec.metric.name, checkpoint_score_order=spec.metric.mode
        )
    return tune.CheckpointConfig(num_to_keep=1)


class _TrialDirName:
    def __init__(self, namer: TrialNamer) -> None:
        self.namer = namer

    def __call__(self, trial) -> str:
        return f"{self.namer(trial.config)}_{trial.trial_id}"


def plan_json(plan: Plan) -> str:
    return json.dumps(plan_summary(plan), indent=2)


def plan_summary(plan: Plan) -> dict:
    spec = plan.spec
    return {
        "name": spec.name,
        "description": spec.description,
        "algorithm": spec.search.algorithm,
        "num_trials": plan.num_trials,
        "epochs_per_trial": plan.epochs_per_trial,
        "total_epochs": plan.total_epochs,
        "asha_expected_epochs": plan.asha_epochs,
        "train_images": plan.train_images,
        "gpu_hours": plan.gpu_hours,
        "models": plan.models,
        "space": spec.search.space if plan.trials is None else None,
        "trials": [
            {"index": t.index, "name": t.name, "varying": t.varying, "config": t.config} for t in plan.trials or []
        ],
    }


def _rows(results, namer: TrialNamer, epochs: int, stopped_by: str) -> list[dict]:
    rows = []
    for result in results:
        config = result.config or {}
        df = result.metrics_dataframe
        history = df[df[M.VAL_ERROR].notna()] if df is not None and M.VAL_ERROR in df else None
        if history is not None and STATUS in history:
            history = history[history[STATUS] != str(Status.DIVERGED)]
        status = final_status(result.metrics, errored=result.error is not None, planned_epochs=epochs)
        row = {"name": namer(config) if config else "?", "status": _describe_status(status, result.metrics, stopped_by),
               "epochs": int(result.metrics.get(M.EPOCH, 0)) if result.metrics else 0}
        if history is not None and len(history):
            best = history.sort_values([M.VAL_ERROR, M.EPOCH]).iloc[0]
            row.update(best_epoch=int(best[M.EPOCH]), val_error=float(best[M.VAL_ERROR]),
                       test_error=float(best[M.TEST_ERROR]), train_error=float(history.iloc[-1][M.TRAIN_ERROR]))
        rows.append(row)
    return rows


def _finish(prep: Prepared, results, namer: TrialNamer, epochs: int, tracker: SweepTracker | None, num_trials: int) -> int:
    spec = prep.parsed.spec
    rows = _rows(results, namer, epochs, _stopped_by(spec))
    rows.sort(key=lambda r: (r.get("val_error") is None, r.get("val_error", math.inf)))
    print()
    print(format_table(rows))
    ok = [r for r in rows if r.get("val_error") is not None]
    if ok:
        best = ok[0]
        print(f"\nbest (lowest val error, chosen on val): {best['name']}  val err {best['val_error']:.2%}  "
              f"test err {best['test_error']:.2%} at epoch {best['best_epoch']}")
    if spec.tracking.log_best_checkpoint and tracker is not None:
        _log_best_checkpoints(results, spec, tracker)
    print(f"MLflow: {prep.tracking_uri} (experiment {prep.experiment!r}); browse with `resnet-sweep ui`")
    if len(rows) < num_trials:
        reason = " (budget.max_epochs reached)" if spec.budget.max_epochs else ""
        print(f"{num_trials - len(rows)} of {num_trials} planned trials did not run{reason}")
    if results.num_terminated + results.num_errors < len(results):
        print(f"the sweep is not finished; continue it with `resnet-sweep resume {prep.storage_path}/{prep.name}`")
    failed = [r for r in rows if r["status"] == str(Status.FAILED)]
    if failed:
        print(f"{len(failed)} trial(s) failed", file=sys.stderr)
        return 1
    return 0


def _log_best_checkpoints(results, spec, tracker: SweepTracker) -> None:
    for result in results:
        run_id = tracker.runs.get(result.metrics.get("trial_id", "")) if result.metrics else None
        checkpoint = result.get_best_checkpoint(spec.metric.name, spec.metric.mode) if result.best_checkpoints else result.checkpoint
        if run_id and checkpoint is not None:
            with checkpoint.as_directory() as folder:
                tracker.client.log_artifacts(run_id, folder, "best_checkpoint")


def format_table(rows: list[dict]) -> str:
    header = f"{'trial':<46} {'status':<27} {'epochs':>6} {'best ep':>7} {'train err':>9} {'val err':>8} {'test err':>8}"
    lines = [header, "-" * len(header)]
    pct = lambda v: f"{v:.2%}" if v is not None else "-"  # noqa: E731
    for r in rows:
        lines.append(
            f"{r['name']:<46} {r['status']:<27} {r['epochs']:>6} {r.get('best_epoch', '-'):>7} "
            f"{pct(r.get('train_error')):>9} {pct(r.get('val_error')):>8} {pct(r.get('test_error')):>8}"
        )
    lines.append("(train err: last epoch; val/test err: at the best val epoch; test never chooses)")
    return "\n".join(lines)


def find_experiment(name_or_path: str, storage_path: str | None) -> str:
    """A sweep's experiment folder from its name (under the storage path) or its path."""
    candidate = Path(name_or_path).expanduser()
    if "://" in name_or_path:
        if _read_text(name_or_path, SPEC_FILE) is None:
            raise SpecError("", f"no sweep at {name_or_path} (no {SPEC_FILE} there, or the storage is unreachable)")
        return name_or_path
    if (candidate / SPEC_FILE).is_file():
        return str(candidate.resolve())
    storage = storage_path or default_storage_path()
    path = f"{storage.rstrip('/')}/{name_or_path}"
    if _read_text(path, SPEC_FILE) is None:
        raise SpecError("", f"no sweep named {name_or_path!r} in {storage} (and no sweep folder at that path)")
    return path if "://" in path else str(Path(path).resolve())


def resume_sweep(experiment_path: str, *, address: str | None = None) -> int:
    from ray import tune

    text = _read_text(experiment_path, SPEC_FILE)
    parsed = parse_spec(text, source=f"{experiment_path}/{SPEC_FILE}")
    spec = parsed.spec
    plan = make_plan(parsed, with_models=False)
    _init_ray(address)
    if spec.search.algorithm == "optuna":
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(spec.max_concurrent or os.cpu_count() or 1)
    trainable = tune.with_resources(train_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True)
    print(f"resuming {experiment_path}", flush=True)
    results = tuner.fit()
    name = experiment_path.rstrip("/").rsplit("/", 1)[-1]
    tracking = json.loads(_read_text(experiment_path, TRACKING_FILE) or "{}")
    uri = tracking.get("tracking_uri") or normalize_tracking_uri(spec.tracking.tracking_uri or default_tracking_uri())
    prep = Prepared(parsed, plan, experiment_path.rsplit("/", 1)[0], name, uri, tracking.get("experiment") or spec.name)
    varying = _varying_keys(prep)
    return _finish(prep, results, TrialNamer(varying), plan.epochs_per_trial, None, tracking.get("num_trials", len(results)))
