"""Running a sweep: Ray Tune with the planned trials (or Optuna), ASHA, per-epoch checkpoints,
MLflow tracking in the driver, live progress and the final table of every trial."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from orchestrator.persistence import driver_lock, storage
from orchestrator.running import cluster, ray_compat
from orchestrator.running.arrays import (
    ArrayDirName,
    ArrayMembers,
    array_config,
    member_results,
    members_of,
    trained_epochs,
)
from orchestrator.running.environment import parent_run_environment
from orchestrator.running.progress import (
    TUNE_INTERRUPT,
    Progress,
    TrialDirName,
    TrialErrorTraces,
    TrialNamer,
    table_rows,
)
from orchestrator.running.stages import Stage, earlier_trials, stages, started
from orchestrator.running.tracker import SweepTracker
from orchestrator.running.trainable import (
    RestoreFromWhatIsThere,
    train_array_trial,
    train_data_parallel_trial,
    train_trial,
)
from orchestrator.sweepfile.calibration import duration, predicted
from orchestrator.sweepfile.growth import trial_identity
from orchestrator.sweepfile.plan import Plan, make_plan, plan_json
from orchestrator.sweepfile.space import OPTUNA_STUDY, optuna_space, optuna_warm_start
from orchestrator.sweepfile.spec import ParsedSpec, SpecError, parse_spec
from orchestrator.tracking import login
from orchestrator.tracking.mlflow_store import (
    check_tracking_uri,
    default_tracking_uri,
    normalize_tracking_uri,
    redact,
    secret_in,
    use_tracking_uri,
)
from orchestrator.tracking.writer import TRACKING_FENCE
from orchestrator.trial_table import format_table
from orchestrator.vocabulary import TAG_OVERRIDES, TAG_PREDICTED_WALL, TAG_STORAGE, TAG_WALL
from resnet_core import metrics as M
from resnet_core.data import DataUnavailableError, check_data
from resnet_core.errors import ConfigError
from resnet_core.metrics import Status
from resnet_core.train import RunConfig

__all__ = [
    "SPEC_FILE",
    "SweepError",
    "continue_sweep",
    "find_experiment",
    "holding",
    "prepare_sweep",
    "resume_sweep",
    "run_or_resume",
    "run_sweep",
    "write_report",
]

SPEC_FILE = "sweep.yaml"  # the sweep file, saved in the experiment folder for `resume`
TRACKING_FILE = "tracking.json"  # where its MLflow runs are, for `resume`
SMOKE_EPOCHS, SMOKE_IMAGES, SMOKE_TRIALS = 2, 256, 4
PENDING_TRIALS = "TUNE_MAX_PENDING_TRIALS_PG"  # Tune's limit on trials waiting for resources
CLUSTER_MAX_FAILURES = 3  # failure.max_failures when unset and the sweep runs on a cluster


class SweepError(Exception):
    """A runtime failure before or while running (exit code 1)."""


@dataclass(frozen=True)
class Prepared:
    """A sweep checked and planned before Ray starts: what `run` runs and `resume` reopens."""

    parsed: ParsedSpec
    plan: Plan
    storage_path: str
    name: str  # the Tune experiment's folder name (made unique when the sweep starts)
    tracking_uri: str
    experiment: str

    stage: str = ""  # the Tune experiment of the sweep this runs: "" the first, else a `run --extend`'s (stages.py)

    @property
    def experiment_path(self) -> str:
        """The sweep's folder: its file, tracking.json and driver lock, and its first Tune experiment."""
        return storage.join(self.storage_path, self.name)

    @property
    def tune_path(self) -> str:
        """The folder of the Tune experiment this runs (``stage``'s)."""
        return storage.join(self.experiment_path, self.stage) if self.stage else self.experiment_path


def _smoke(parsed: ParsedSpec) -> ParsedSpec:
    """--smoke-test: the same sweep, tiny: 2 epochs on 256 training images, evaluated on 256 val and
    256 test images, at most 4 trials."""
    spec = parsed.spec
    train = {k: v for k, v in spec.train.items() if k != "iterations"}
    train["epochs"] = min(train.get("epochs") or SMOKE_EPOCHS, SMOKE_EPOCHS)
    dataset = dict(spec.dataset)
    for limit in ("train_limit", "eval_limit"):
        dataset[limit] = min(dataset.get(limit) or SMOKE_IMAGES, SMOKE_IMAGES)
    searched = ("train.epochs", "train.iterations", "dataset.train_limit", "dataset.eval_limit")
    search = {"space": {k: v for k, v in spec.search.space.items() if k not in searched}}
    if spec.search.algorithm != "grid":
        search["num_samples"] = min(spec.search.num_samples, SMOKE_TRIALS)
    return parsed.replaced(
        spec.model_copy(
            update={
                "train": train,
                "dataset": dataset,
                "search": spec.search.model_copy(update=search),
                "scheduler": spec.scheduler.model_copy(update={"grace_period": 1, "max_t": train["epochs"]}),
            }
        )
    )


def check_resources(spec) -> None:
    """A trial's resources (all its workers') must fit this machine (local runs)."""
    import torch

    r = spec.resources
    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    each = f" ({r.workers} workers × {{}})" if r.workers > 1 else ""
    if r.trial_gpus > gpus:
        raise SpecError(
            "resources.gpu", f"{r.trial_gpus:g} GPUs per trial{each.format(f'{r.gpu:g}')}, but this machine has {gpus}"
        )
    if r.trial_cpus > cpus:
        raise SpecError(
            "resources.cpu", f"{r.trial_cpus:g} CPUs per trial{each.format(f'{r.cpu:g}')}, but this machine has {cpus}"
        )


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
    cluster.check_address(address)
    if smoke_test:
        parsed = _smoke(parsed)
    with _data_errors(parsed):  # an image folder's counts are read for the plan
        plan = make_plan(parsed, with_models=False, first=SMOKE_TRIALS if smoke_test else None)
    spec = parsed.spec
    uri = _tracking_uri(tracking_uri, spec)
    cluster.check_tracking_reachable_from_tune(address, uri)
    # Fail fast on data: the driver checks (or downloads into the cache) what trials will need.
    with _data_errors(parsed):
        check_data(RunConfig.from_flat(plan.configs[0]).dataset)
    if address is None:
        check_resources(spec)
        # `plan --calibrate`'s rates for this machine, if it measured them: the run says at its
        # end what it predicted against what it took.
        plan = dataclasses.replace(plan, prediction=predicted(plan))
    where = storage.normalize(storage_path or spec.storage_path or storage.default_storage_path())
    storage.check_usable(where)
    return Prepared(parsed, plan, where, spec.name, uri, spec.tracking.experiment or spec.name)


@contextlib.contextmanager
def _data_errors(parsed: ParsedSpec):
    """Data that cannot be had: SweepError (exit 1); data that does not fit a setting (a class
    with too few images to hold out val): the setting's SpecError (exit 2)."""
    try:
        yield
    except DataUnavailableError as err:
        raise SweepError(str(err)) from None
    except ConfigError as err:
        raise parsed.error(tuple(err.field.split(".", 1)), err.reason) from None


def _tracking_uri(given: str | None, spec) -> str:
    """The tracking URI to use (--tracking-uri, else the sweep's, else ./mlflow.db), checked, as
    stored and shown: without its credentials (tracking.use_tracking_uri)."""
    field = "--tracking-uri" if given else "tracking.tracking_uri"
    if spec.tracking.tracking_uri and (secret := secret_in(spec.tracking.tracking_uri)):
        raise SpecError(
            "tracking.tracking_uri",
            f"{secret} in the sweep file would be saved with the sweep; pass the "
            f"URI in --tracking-uri, or the login in MLFLOW_TRACKING_PASSWORD or "
            f"MLFLOW_TRACKING_TOKEN, instead",
        )
    try:
        uri = use_tracking_uri(given or spec.tracking.tracking_uri or default_tracking_uri())
        check_tracking_uri(uri)
    except Exception as err:
        raise SpecError(field, str(err)) from None
    return uri


def saved_spec_text(parsed: ParsedSpec) -> str:
    """The sweep file kept with the experiment: the user's text, or the spec as it ran after
    `--set` or --smoke-test changed it (so `resume` continues the same sweep)."""
    return parsed.resolved_text(changed_in_memory_by="--smoke-test")


def write_tracking(prep: Prepared) -> dict:
    """tracking.json: where the sweep's MLflow runs are, for `resume` and `sync` (the sweep key
    finds them by tag)."""
    tracking = {
        "tracking_uri": prep.tracking_uri,
        "experiment": prep.experiment,
        "num_trials": prep.plan.num_trials,
        "sweep_key": uuid.uuid4().hex,
        "workdir": os.getcwd(),
    }
    storage.write_text(prep.experiment_path, TRACKING_FILE, json.dumps(tracking))
    return tracking


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
            # Each (trial, array member, epoch) once: resumes and final results repeat them.
            self.seen.update((trial_id, member, epoch) for member, epoch in trained_epochs(result))
            return False

        def stop_all(self) -> bool:
            return len(self.seen) >= max_epochs

    return EpochBudget()


def _search_and_space(prep: Prepared, concurrency: int, earlier: list):
    """Tune's search algorithm and param_space; ``concurrency`` 0 means no limit. ``earlier``:
    the sweep's finished trials (EarlierTrial), which an Optuna stage's sampler is told first."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    spec = prep.parsed.spec
    if spec.search.algorithm == "optuna":
        limit = concurrency or prep.plan.num_trials
        study, seed = {}, spec.search.seed
        if earlier:
            told = [
                (t.config, t.result[spec.metric.name]) for t in earlier if t.result.get(spec.metric.name) is not None
            ]
            study["storage"], known = optuna_warm_start(prep.parsed, told)
            study["study_name"] = OPTUNA_STUDY
            # Seeded as the first stage, its first draws would be the first stage's again.
            seed += known
            print(f"Optuna's sampler starts from the sweep's {known} finished trials (a warm start)", flush=True)
        searcher = OptunaSearch(
            space=optuna_space(prep.parsed),
            metric=spec.metric.name,
            mode=spec.metric.mode,
            seed=seed,
            **study,
        )
        return ConcurrencyLimiter(searcher, max_concurrent=limit), {}
    arrays = prep.plan.arrays
    points = [array_config([t.config for t in a]) for a in arrays] if arrays else [t.config for t in prep.plan.trials]
    param_space: dict[str, Any] = dict(points[0])
    for key in points[0]:
        values = {repr(p[key]): p[key] for p in points}
        if len(values) > 1:  # a placeholder domain; the points themselves are what runs
            param_space[key] = tune.choice(list(values.values()))
    return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrency), param_space


def varying_keys(prep: Prepared) -> list[str]:
    space = list(prep.parsed.spec.search.space)
    keys = ["model.depth" if k == "model.n" else k for k in space]
    if prep.parsed.spec.search.seeds is not None:
        keys.append("train.seed")
    return keys


def _connect(address: str | None, storage_path: str, spec, num_trials: int) -> None:
    ray_compat.check_tune_messages()  # Ctrl-C is seen only in Tune's log text
    logging.getLogger(TUNE_INTERRUPT.LOGGER).addFilter(TUNE_INTERRUPT)
    logging.getLogger(TrialErrorTraces.LOGGER).addFilter(TrialErrorTraces())
    TUNE_INTERRUPT.seen = False
    driver_env = {}
    if address is not None:
        # Every trial that may run at once is requested at once (Tune's default is 16 pending):
        # an autoscaler sees the sweep's whole demand and adds nodes for it. (Known before Ray
        # starts: with ray:// these settings travel to Tune's loop on the head.)
        driver_env[PENDING_TRIALS] = str(spec.max_concurrent or num_trials)
    try:
        cluster.connect(address, driver_env)
    except cluster.ClusterError as err:
        raise SweepError(str(err)) from None
    if address is None and spec.search.algorithm == "optuna":
        # ray#46965: with a searcher Tune keeps one pending trial at a time by default, which
        # serialises an Optuna sweep; allow as many pending trials as can run at once.
        os.environ[PENDING_TRIALS] = str(cluster.trial_concurrency(spec, local=True))
    if address is not None:
        print(f"checking that every node of the cluster can use {storage_path} …", flush=True)
        cluster.check_storage_on_nodes(storage_path)


def _share_login(address: str | None, sweep_key: str):
    """With ray://, the MLflow login for the tracker in Tune's loop on the head (orchestrator.tracking.login)."""
    return login.share(sweep_key) if cluster.runs_tune_remotely(address) else None


def _where_it_runs(spec, concurrency: int, address: str | None) -> str:
    if address is None:
        return f"{concurrency} at a time on this machine"
    nodes = cluster.alive_nodes()
    fits = sum(
        int(n["Resources"].get("CPU", 0) // spec.resources.cpu) for n in nodes
    )  # workers (a trial's may span nodes)
    if spec.resources.gpu:
        fits = min(fits, sum(int(n["Resources"].get("GPU", 0) // spec.resources.gpu) for n in nodes))
    fits //= spec.resources.workers
    limit = f"up to {concurrency}" if concurrency else "as many as the cluster fits"
    return f"{limit} at a time on the Ray cluster at {address} ({len(nodes)} nodes now, room for {fits}; more nodes get trials as they join)"


def existing_sweep(prep: Prepared) -> str | None:
    """This sweep's folder when it is already in the storage path (same name, same sweep file):
    an entrypoint that may run twice (a Kubernetes job retried after a lost head) continues it
    instead of starting a second sweep. A different sweep of the same name is an error."""
    name = prep.parsed.spec.name
    path = storage.join(prep.storage_path, name)
    saved = storage.read_text(path, SPEC_FILE)
    if saved is None:
        return None
    if parse_spec(saved).spec.spec_hash() != prep.parsed.spec.spec_hash():
        raise SpecError(
            "name",
            f"another sweep named {name!r} is already in {prep.storage_path} (its {SPEC_FILE} differs "
            f"from this one); give this sweep another name, or continue that one with "
            f"`resnet-sweep resume {shlex.quote(path)}`",
        )
    return path


def run_or_resume(prep: Prepared, *, address: str | None = None, report: bool = True) -> int:
    """`run --resume-if-exists`: continue this sweep when it is in the storage path, else start it."""
    from ray import tune

    path = existing_sweep(prep)
    if path is None:
        return run_sweep(prep, address=address, report=report)
    if tune.Tuner.can_restore(path, storage_filesystem=storage.tune_filesystem(path)):
        print(f"{prep.parsed.spec.name} is already in {prep.storage_path}: continuing it", flush=True)
        return resume_sweep(path, address=address, report=report)
    # Its driver died before Tune saved anything: nothing ran, so it starts again in that folder.
    return run_sweep(prep, address=address, folder_taken=True, report=report)


def run_sweep(prep: Prepared, *, address: str | None = None, folder_taken: bool = False, report: bool = True) -> int:
    """`resnet-sweep run`: start Ray (or join ``address``), claim the sweep's folder in the
    storage path, hold its driver lock, and run the Tune experiment with the tracker writing
    MLflow, the progress lines, ASHA and the searcher; then the final table and the report.
    Returns the exit code: 0, 1 when a trial failed, 130 when interrupted (Ctrl-C)."""
    spec, plan = prep.parsed.spec, prep.plan
    _connect(address, prep.storage_path, spec, _tune_trials(plan))
    if folder_taken:  # this sweep's own folder, from a start that never got under way
        storage.write_text(prep.experiment_path, SPEC_FILE, saved_spec_text(prep.parsed))
    else:
        name = storage.claim_name(prep.storage_path, spec.name, SPEC_FILE, saved_spec_text(prep.parsed))
        prep = dataclasses.replace(prep, name=name)
    with holding(prep.experiment_path, prep.name) as lock:
        sweep_key = write_tracking(prep)["sweep_key"]
        login_holder = _share_login(address, sweep_key)  # noqa: F841 — held while Tune runs
        env_tags, env_artifacts = parent_run_environment(cluster=address is not None)
        tracker = sweep_tracker(
            prep,
            sweep_key,
            tags={
                "resnet_sweep.spec_hash": spec.spec_hash(),
                "resnet_sweep.version": version("resnet-sweep"),
                TAG_STORAGE: prep.experiment_path,
                "mlflow.note.content": spec.description,
                **overrides_tag(prep.parsed),
                **env_tags,
                **({TAG_PREDICTED_WALL: f"{plan.prediction['predicted_wall_s']:.1f}"} if plan.prediction else {}),
            },
            artifacts={SPEC_FILE: saved_spec_text(prep.parsed), "plan.json": plan_json(plan), **env_artifacts},
        )
        return _fit_stage(prep, tracker, lock, address=address, report=report)


def overrides_tag(parsed: ParsedSpec) -> dict[str, str]:
    """The parent run's record of the `--set`s a sweep was run with (none: no tag)."""
    return {TAG_OVERRIDES: json.dumps([str(o) for o in parsed.overrides])} if parsed.overrides else {}


def _tune_trials(plan: Plan) -> int:
    """Tune trials of a plan: one per array, else one per trial."""
    return len(plan.arrays) if plan.arrays else plan.num_trials


def _fit_stage(
    prep: Prepared, tracker: SweepTracker, lock, *, address: str | None, report: bool, earlier: list | None = None
) -> int:
    """Runs a new Tune experiment of the sweep (its first, or the trials a `run --extend` added,
    ``prep.stage``): the search algorithm over ``prep.plan``, ASHA, the tracker and the progress
    lines; then the final table. ``earlier``: finished trials Optuna starts from."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    spec, plan = prep.parsed.spec, prep.plan
    arrays = plan.arrays
    concurrency = cluster.trial_concurrency(spec, local=address is None)
    search_alg, param_space = _search_and_space(prep, concurrency, earlier or [])
    scheduler = None
    if spec.scheduler.name == "asha":
        scheduler = ASHAScheduler(
            time_attr=M.EPOCH,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            max_t=spec.scheduler.max_t or plan.epochs_per_trial,
        )
    namer = tracker.trial_namer
    trial_name = ArrayDirName(namer) if arrays else TrialDirName(namer)
    progress = Progress(
        namer,
        plan.epochs_per_trial,
        _stopped_by(spec),
        _max_failures(spec, address),
        planned=plan.num_trials,
        epochs_expected=round(plan.asha_epochs) if plan.asha_epochs else None,
    )
    # With arrays, MLflow and the progress lines see each array's members as trials.
    per_trial = [ArrayMembers([tracker, progress])] if arrays else [tracker, progress]
    stage_root, stage_name = prep.tune_path.rsplit("/", 1)
    tuner = tune.Tuner(
        _trainable(spec, prep.tune_path),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric.name,
            mode=spec.metric.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=_tune_trials(plan),
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            # A trial's actor is kept for the next one: no worker start-up between trials.
            # Not for data-parallel trials: ending the actor is what ends its Ray Train
            # run (the controller and workers are the actor's).
            reuse_actors=spec.resources.workers == 1,
        ),
        run_config=tune.RunConfig(
            name=stage_name,
            storage_path=stage_root,
            storage_filesystem=storage.tune_filesystem(stage_root),
            failure_config=tune.FailureConfig(max_failures=_max_failures(spec, address)),
            checkpoint_config=_checkpoint_config(spec),
            callbacks=[cluster.TuneDriverSetup(), JsonLoggerCallback(), *per_trial],
            stop=_epoch_budget_stopper(spec.budget.max_epochs) if spec.budget.max_epochs else None,
            verbose=0,
        ),
    )
    in_arrays = f" in {len(arrays)} arrays of up to {spec.resources.array}" if arrays else ""
    what = f"{prep.stage} of sweep {prep.name}" if prep.stage else f"sweep {prep.name}"
    print(
        f"{what}: {plan.num_trials} trials{in_arrays}, up to {plan.epochs_per_trial} epochs each, "
        f"{_where_it_runs(spec, concurrency, address)}; results in {prep.tune_path}, MLflow {prep.tracking_uri} "
        f"(experiment {prep.experiment!r})",
        flush=True,
    )
    results = tuner.fit()
    if lock.lost:
        print(lock.lost, file=sys.stderr)
        return 1
    return _finish(
        prep, results, namer, plan.epochs_per_trial, tracker, plan.num_trials, address=address, report=report
    )


@contextlib.contextmanager
def holding(experiment_path: str, name: str):
    """This driver holds the sweep (a second driver on one sweep is refused: exit 2). Should
    another driver take it over (this one's storage stalled past the stale time), this one
    stops writing to MLflow and stops its trials as on Ctrl-C (``lock.lost`` says why)."""
    try:
        with driver_lock.hold(experiment_path, name, on_lost=stop_when_taken) as lock:
            yield lock
    except driver_lock.SweepBusy as err:  # raised only on entry, before anything started
        raise SpecError("", str(err)) from None
    except driver_lock.LockUnavailable as err:
        raise SweepError(str(err)) from None


def stop_when_taken(message: str) -> None:
    """The sweep now belongs to another driver: no MLflow write from this process follows,
    and Tune stops its trials and saves its state, as on Ctrl-C."""
    import signal

    TRACKING_FENCE.set()
    print(message, file=sys.stderr, flush=True)
    signal.raise_signal(signal.SIGINT)


def _max_failures(spec, address: str | None) -> int:
    if spec.failure.max_failures is not None:
        return spec.failure.max_failures
    return 0 if address is None else CLUSTER_MAX_FAILURES


def _trainable(spec, experiment_path: str):
    from ray import tune

    r = spec.resources
    if r.workers > 1:
        trainable = tune.with_parameters(
            train_data_parallel_trial, experiment_path=experiment_path, workers=r.workers, cpu=r.cpu, gpu=r.gpu
        )
        # The Tune function only relays results: Ray Train's workers hold the resources. (A
        # token byte of memory: Tune needs some resource, and any CPU would keep a worker out.)
        resources = {"cpu": 0, "memory": 1}
    else:
        if r.array > 1:  # an array trial takes the resources of one trial
            trainable = tune.with_parameters(
                train_array_trial, experiment_path=experiment_path, metric=spec.metric.name
            )
        else:
            trainable = tune.with_parameters(train_trial, experiment_path=experiment_path)
        resources = {"cpu": r.cpu, "gpu": r.gpu}
    ray_compat.add_trainable_mixins(trainable, RestoreFromWhatIsThere)
    return tune.with_resources(trainable, resources)


def _checkpoint_config(spec):
    """Keep two checkpoints per trial at most: the latest (Tune always keeps it, for resume) and
    the best epoch's (lowest val error, earliest on ties), whose weights give the errors the
    trial reports: what `export` writes and `tracking.log_best_checkpoint` logs."""
    from ray import tune

    return tune.CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute=M.BEST_EPOCH_RANK, checkpoint_score_order="min"
    )


def _finish(
    prep: Prepared,
    results,
    namer: TrialNamer,
    epochs: int,
    tracker: SweepTracker | None,
    num_trials: int,
    *,
    address: str | None,
    report: bool,
) -> int:
    spec = prep.parsed.spec
    rows = table_rows(member_results(results) if prep.plan.arrays else results, namer, epochs, _stopped_by(spec))
    rows.sort(key=lambda r: (r.get("val_error") is None, r.get("val_error", math.inf)))
    print()
    print(format_table(rows, show_nodes=address is not None))
    ok = [r for r in rows if r.get("val_error") is not None]
    if ok:
        best = ok[0]
        print(
            f"\nbest (lowest val error, chosen on val): {best['name']}  val err {best['val_error']:.2%}  "
            f"test err {best['test_error']:.2%} at epoch {best['best_epoch']}"
        )
    if spec.tracking.log_best_checkpoint and tracker is not None:
        _log_best_checkpoints(results, spec, tracker)
    browse = (
        "open it in a browser"
        if prep.tracking_uri.startswith(("http://", "https://"))
        else "browse with `resnet-sweep ui`"
    )
    print(f"MLflow: {prep.tracking_uri} (experiment {prep.experiment!r}); {browse}")
    if len(rows) < num_trials:
        reason = " (budget.max_epochs reached)" if spec.budget.max_epochs else ""
        print(f"{num_trials - len(rows)} of {num_trials} planned trials did not run{reason}")
    interrupted = TUNE_INTERRUPT.seen or results.num_terminated + results.num_errors < len(results)
    prediction = prep.plan.prediction if not interrupted else None
    if prediction and tracker is not None and tracker.sweep.parent_id:
        # Before the report, which shows it; the last line below adds the report's own time.
        try:
            tracker.client.set_tag(tracker.sweep.parent_id, TAG_WALL, f"{command_seconds():.1f}")
        except Exception as err:  # MLflow gone since the sweep's last write: only this record is lost
            print(f"warning: the sweep's wall time was not recorded in MLflow ({type(err).__name__})", file=sys.stderr)
    if report and not interrupted:
        write_report(prep)
    if prediction:
        print(
            f"wall time: predicted {duration(prediction['predicted_wall_s'])} (`plan --calibrate`), "
            f"took {duration(command_seconds())}"
        )
    if interrupted:
        again = " ".join(
            shlex.quote(a)
            for a in ["resnet-sweep", "resume", prep.experiment_path, *(["--address", address] if address else [])]
        )
        left = sum(r["status"].startswith(str(Status.INTERRUPTED)) for r in rows)
        print(f"interrupted: {left} trial(s) not finished; continue the sweep with `{again}`")
        return 130  # as a shell reports Ctrl-C
    failed = [r for r in rows if r["status"] in (str(Status.FAILED), str(Status.OUT_OF_MEMORY))]
    if failed:
        print(f"{len(failed)} trial(s) failed", file=sys.stderr)
        return 1
    return 0


_IMPORTED = time.monotonic()


def command_seconds() -> float:
    """Seconds since this command started: its process's start (Linux's /proc/self/stat), else
    since this module was imported."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


def write_report(prep: Prepared) -> None:
    """The paper report at the end of the sweep (`resnet-sweep report`); a failure here does not
    change how the sweep ended, and says how to make the report later."""
    from orchestrator.report.report import report_sweep

    try:
        folder = report_sweep(prep.tracking_uri, prep.name, experiment=prep.experiment)
    except Exception as err:
        again = " ".join(
            shlex.quote(a) for a in ["resnet-sweep", "report", prep.name, "--tracking-uri", prep.tracking_uri]
        )
        print(
            f"warning: the report was not written ({type(err).__name__}: {redact(str(err))[:300]}); make it with "
            f"`{again}`",
            file=sys.stderr,
        )
        return
    print(f"report: {folder / 'index.md'} and report.html (also on the sweep's MLflow run, artifacts report/)")


def _log_best_checkpoints(results, spec, tracker: SweepTracker) -> None:
    # The Tune loop ran elsewhere (a ray:// cluster's head) or was restored (`resume`): look the runs up.
    if not tracker.runs and not tracker.find_runs():
        print(
            "warning: tracking.log_best_checkpoint: this sweep's MLflow runs were not found; no checkpoint was logged",
            file=sys.stderr,
        )
        return
    arrays = 0
    for result in results:
        if members_of(result.config) is not None:
            # An array keeps one checkpoint for all its members, the best by its best member's
            # metric: that is no member's own best checkpoint, so none is logged.
            arrays += 1
            continue
        run_id = tracker.runs.get(result.metrics.get("trial_id", "")) if result.metrics else None
        checkpoint = (
            result.get_best_checkpoint(M.BEST_EPOCH_RANK, "min") if result.best_checkpoints else result.checkpoint
        )
        if run_id and checkpoint is not None:
            with checkpoint.as_directory() as folder:
                tracker.client.log_artifacts(run_id, folder, "best_checkpoint")
    if arrays:
        print(
            f"note: tracking.log_best_checkpoint: nothing is logged for the sweep's {arrays} array(s) (an array's "
            f"checkpoint holds all its members and is chosen by its best member); their checkpoints are in "
            f"its trials' folders",
            file=sys.stderr,
        )


def find_experiment(name_or_path: str, storage_path: str | None) -> str:
    """A sweep's experiment folder from its name (under the storage path) or its path/URI."""
    if "://" in name_or_path and not storage.is_local(name_or_path):
        uri = storage.normalize(name_or_path, "NAME|PATH")
        if storage.read_text(uri, SPEC_FILE) is None:
            raise SpecError(
                "",
                f"no sweep at {uri} (no {SPEC_FILE} there, or the storage is unreachable with this environment's credentials)",
            )
        return uri.rstrip("/")
    candidate = Path(name_or_path.removeprefix("file://")).expanduser()
    if (candidate / SPEC_FILE).is_file():
        return str(candidate.resolve())
    root = storage.normalize(storage_path or storage.default_storage_path(), "--storage-path")
    path = storage.join(root, name_or_path)
    if storage.read_text(path, SPEC_FILE) is None:
        raise SpecError("", f"no sweep named {name_or_path!r} in {root} (and no sweep folder at that path)")
    return path


def sweep_tracking(experiment_path: str, spec, given_uri: str | None) -> tuple[dict, str]:
    """A started sweep's tracking.json and its tracking URI, checked. ``given_uri``
    (--tracking-uri of resume/sync) may only add the login: the runs are on the stored server."""
    tracking = json.loads(storage.read_text(experiment_path, TRACKING_FILE) or "{}")
    stored = tracking.get("tracking_uri") or normalize_tracking_uri(
        spec.tracking.tracking_uri or default_tracking_uri()
    )
    uri = _tracking_uri(given_uri or stored, spec)
    if uri != stored:
        raise SpecError(
            "--tracking-uri",
            f"this sweep logs to {stored}; --tracking-uri may only add the login to it (http://USER:PASSWORD@…)",
        )
    return tracking, uri


def _roots_from(parsed: ParsedSpec, workdir: str | None) -> ParsedSpec:
    """A relative ``dataset.root`` is taken from the folder the sweep started in (tracking.json's
    workdir), wherever `resume` or `sync` runs: the sweep file keeps it as the user wrote it."""
    if not workdir:
        return parsed

    def absolute(root):
        return os.path.join(workdir, os.path.expanduser(root)) if isinstance(root, str) else root

    spec = parsed.spec
    update = {}
    if "root" in spec.dataset:
        update["dataset"] = {**spec.dataset, "root": absolute(spec.dataset["root"])}
    roots = spec.search.space.get("dataset.root")
    if isinstance(roots, list):
        space = {**spec.search.space, "dataset.root": [absolute(r) for r in roots]}
        update["search"] = spec.search.model_copy(update={"space": space})
    return parsed.replaced(spec.model_copy(update=update))


def open_sweep(experiment_path: str, tracking_uri: str | None = None) -> tuple[Prepared, dict]:
    """A started sweep, from its folder: its spec and plan, tracking.json, the checked tracking URI."""
    text = storage.read_text(experiment_path, SPEC_FILE)
    parsed = parse_spec(text, source=f"{experiment_path}/{SPEC_FILE}")
    parsed = _roots_from(parsed, json.loads(storage.read_text(experiment_path, TRACKING_FILE) or "{}").get("workdir"))
    plan = make_plan(parsed, with_models=False)
    storage_path, name = experiment_path.rstrip("/").rsplit("/", 1)
    tracking, uri = sweep_tracking(experiment_path, parsed.spec, tracking_uri)
    return Prepared(parsed, plan, storage_path, name, uri, tracking.get("experiment") or parsed.spec.name), tracking


def sweep_tracker(
    prep: Prepared, sweep_key: str, *, tags: dict | None = None, artifacts: dict | None = None
) -> SweepTracker:
    return SweepTracker(
        tracking_uri=prep.tracking_uri,
        experiment=prep.experiment,
        sweep_key=sweep_key,
        sweep_name=prep.name,
        tags=tags or {},
        artifacts=artifacts or {},
        trial_namer=TrialNamer(varying_keys(prep)),
        planned_epochs=prep.plan.epochs_per_trial,
    )


# Tune's own state in a sweep's folder, one file of each per driver session; Tune reads the
# newest by name. All but experiment_state are pickles.
TUNE_STATE_FILES = (
    "experiment_state-*.json",
    "basic-variant-state-*.json",
    "search_gen_state-*.json",
    "searcher-state-*.pkl",
    "callback-states-*.pkl",
)


def _check_tune_state(experiment_path: str) -> None:
    """SweepError naming a Tune state file that is cut short: Tune would fail on it with a
    traceback. (Written whole since resnet-sweep wrote them through whole_files; a folder from
    an older version, or a copy cut short, can still hold one.) What cannot be read at all is
    left to Tune, which says why."""
    import fnmatch
    import pickle

    import ray.cloudpickle

    names = storage.file_names(experiment_path)
    for pattern in TUNE_STATE_FILES:
        newest = max(fnmatch.filter(names, pattern), default=None)
        data = storage.read_bytes(experiment_path, newest) if newest else None
        if data is None:
            continue
        try:
            json.loads(data) if pattern.startswith("experiment_state") else ray.cloudpickle.loads(data)
        except (ValueError, EOFError, pickle.UnpicklingError):  # JSON's and pickle's "cut short"
            raise SweepError(
                f"cannot resume {experiment_path}: Tune's {newest} there is "
                f"{'empty' if not data else f'cut short ({len(data)} bytes)'} (a crash while it was "
                f"written); the trials' checkpoints are intact, but Tune cannot continue this sweep: "
                f"run it again as a new sweep"
            ) from None


def _catch_up(prep: Prepared, tracking: dict) -> None:
    """Writes a killed driver still held for a down MLflow: the trials Tune records as finished
    get no callbacks once Tune continues, so their records are replayed first (what MLflow has
    is skipped). Should MLflow not take them now, the line says how to send them later."""
    from orchestrator.running.replay import replay, tune_trials

    tracker = sweep_tracker(prep, tracking.get("sweep_key", ""), tags={TAG_STORAGE: prep.experiment_path})
    try:
        tracker.setup()
        replay(tracker, tune_trials(prep.tune_path), prep.tune_path, arrays=bool(prep.plan.arrays), finished_only=True)
        left = tracker.end_sweep([], None, wait_s=0)
    except Exception as err:
        sync = " ".join(shlex.quote(a) for a in ["resnet-sweep", "sync", prep.experiment_path])
        print(
            f"warning: MLflow does not answer ({type(err).__name__}: {redact(str(err))[:200]}); the finished trials' "
            f"results it may lack are sent by `{sync}` once it does",
            file=sys.stderr,
            flush=True,
        )
        return
    if tracker.points_sent or tracker.runs_created or tracker.runs_ended:
        print(
            f"MLflow had not received everything before the last driver stopped: sent {tracker.points_sent} metric "
            f"points and {tracker.runs_ended} trial ends from Tune's records"
            + (f" ({left} writes still waiting)" if left else ""),
            flush=True,
        )


def resume_sweep(
    experiment_path: str, *, address: str | None = None, tracking_uri: str | None = None, report: bool = True
) -> int:
    """`resnet-sweep resume`: reopen a started sweep from its folder (sweep.yaml, tracking.json and
    Tune's state), take its driver lock, and let Tune finish it: finished trials stay finished,
    unfinished ones continue from their last checkpoint into the same MLflow runs. A grown
    sweep's stages are continued in order (stages.py). Returns the exit code."""
    prep, tracking = open_sweep(experiment_path, tracking_uri)
    cluster.check_tracking_reachable_from_tune(address, prep.tracking_uri)
    with holding(experiment_path, prep.name) as lock:
        return continue_sweep(prep, tracking, lock, address=address, report=report)


def continue_sweep(prep: Prepared, tracking: dict, lock, *, address: str | None, report: bool) -> int:
    """With the sweep's lock held: each stage that has work left, in order: a started one
    restored by Tune, one that `run --extend` added started; the last one again when every stage
    is finished (its table, and what a killed driver left MLflow). Stops at an interrupt."""
    from orchestrator.running.replay import tune_trials

    sweep_path = prep.experiment_path
    chain = stages(sweep_path, tracking.get("num_trials", prep.plan.num_trials))
    todo = [
        s
        for s in chain
        if not started(sweep_path, s) or any(t.status != "TERMINATED" for t in tune_trials(s.path(sweep_path)))
    ] or chain[-1:]
    _connect(address, prep.storage_path, prep.parsed.spec, prep.plan.num_trials)
    login_holder = _share_login(address, tracking.get("sweep_key", ""))  # noqa: F841 — held while Tune runs
    code = 0
    for i, stage in enumerate(todo):
        staged = dataclasses.replace(prep, stage=stage.name)
        last = report and i == len(todo) - 1
        if started(sweep_path, stage):
            code = max(code, _restore_stage(staged, stage, tracking, lock, address=address, report=last))
        else:
            code = max(code, _start_stage(staged, stage, tracking, lock, address=address, report=last))
        if code > 1 or lock.lost:  # interrupted (130), or another driver took the sweep over
            return code
    return code


def _restore_stage(prep: Prepared, stage: Stage, tracking: dict, lock, *, address: str | None, report: bool) -> int:
    from ray import tune

    path = prep.tune_path
    _check_tune_state(path)
    if storage.is_local(path):
        from orchestrator.persistence.whole_files import remove_unfinished

        remove_unfinished(path, older_than_s=driver_lock.STALE_AFTER_SECONDS)
    _catch_up(prep, tracking)
    tuner = tune.Tuner.restore(
        path,
        _trainable(prep.parsed.spec, path),
        resume_unfinished=True,
        resume_errored=True,
        storage_filesystem=storage.tune_filesystem(path),
    )
    print(f"resuming {path}", flush=True)
    results = tuner.fit()
    if lock.lost:
        print(lock.lost, file=sys.stderr)
        return 1
    # The restored Tune loop holds its own tracker; this one only finds the runs (best checkpoints).
    tracker = sweep_tracker(prep, tracking.get("sweep_key", ""))
    planned = stage.planned if stage.name else tracking.get("num_trials", len(results))
    return _finish(
        prep, results, tracker.trial_namer, prep.plan.epochs_per_trial, tracker, planned, address=address, report=report
    )


def _start_stage(prep: Prepared, stage: Stage, tracking: dict, lock, *, address: str | None, report: bool) -> int:
    """The first run of a stage `run --extend` added: its new trials (or Optuna's further draws,
    the sampler told the sweep's finished trials first), under the sweep's parent run."""
    if stage.file is not None:  # planned from the file it was added with (the saved one may be older)
        parsed = _roots_from(
            parse_spec(stage.file, source=f"{prep.tune_path}: its sweep file"), tracking.get("workdir")
        )
        prep = dataclasses.replace(prep, parsed=parsed, plan=make_plan(parsed, with_models=False))
    staged = dataclasses.replace(prep, plan=_stage_plan(prep.plan, stage))
    earlier = None
    if prep.parsed.spec.search.algorithm == "optuna":
        first = tracking.get("num_trials", prep.plan.num_trials)
        earlier = [t for t in earlier_trials(prep.experiment_path, first) if t.finished]
    tracker = sweep_tracker(staged, tracking.get("sweep_key", ""), tags={TAG_STORAGE: prep.experiment_path})
    return _fit_stage(staged, tracker, lock, address=address, report=report, earlier=earlier)


def _stage_plan(plan: Plan, stage: Stage) -> Plan:
    """The sweep's plan cut to the trials ``stage`` adds (its configurations; Optuna: its draws)."""
    if stage.points is None:
        trials = None
        count = stage.planned
    else:
        wanted = {trial_identity(c) for c in stage.points}
        trials = [t for t in plan.trials if trial_identity(t.config) in wanted]
        count = len(trials)
    share = count / plan.num_trials if plan.num_trials else 0
    return dataclasses.replace(
        plan,
        trials=trials,
        num_trials=count,
        configs=[t.config for t in trials] if trials is not None else plan.configs,
        total_epochs=plan.epochs_per_trial * count,
        asha_epochs=plan.asha_epochs * share if plan.asha_epochs is not None else None,
    )
