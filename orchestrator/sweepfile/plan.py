"""The plan of a sweep (`resnet-sweep plan`): its trials, each checked as it would run, the epochs
and what ASHA is expected to train, the models' counts, the GPU- and CPU-hour estimates, the
image loader against the GPUs, and warnings of what the file does not say."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from orchestrator.sweepfile.model_counts import check_trial_size, model_footprint
from orchestrator.sweepfile.space import (
    check_depth_draws,
    optuna_probe_points,
    resolve_trial,
    search_points,
    trial_name,
)
from orchestrator.sweepfile.spec import FIELD_TYPES, ParsedSpec, SpecError
from resnet_core.config import (
    FOLDER_DATASETS,
    PAPER_ITERATIONS,
    RunConfig,
    num_classes,
    planned_epochs,
    split_sizes,
    steps_per_epoch,
)
from resnet_core.errors import ConfigError
from resnet_core.folders import ILSVRC2012

__all__ = [
    "Plan",
    "Trial",
    "asha_expected_epochs",
    "asha_finishers",
    "asha_trial_epochs",
    "assumed_gpu_tflops",
    "make_plan",
    "plan_json",
    "plan_summary",
]

# Sustained training throughput per GPU the GPU-hour estimate assumes for CIFAR-size nets: assumed,
# not measured, and without a published source (no GPU has been lent to this project to measure
# it; small CIFAR ResNets run far from a GPU's peak). `plan --calibrate` on the GPU machine
# measures the trials' real rate (and states it in TFLOP/s); `plan --gpu-tflops` changes this one.
DEFAULT_GPU_TFLOPS = 5.0
# ImageNet-size models (2015 Table 1: arch imagenet, here at ≥ IMAGENET_MIN_SIZE px) keep a GPU far
# busier. NVIDIA's DeepLearningExamples publish mixed-precision ResNet-50 v1.5 training in PyTorch
# at 2,470 images/s on one A100 and 16,621 on eight: 6 flops per multiply-add and image (4.09G),
# ≈ 60 and 51 TFLOP/s per GPU in this plan's count. Not yet measured with this trainer (no GPU
# has been lent to it); `plan --gpu-tflops` changes it.
IMAGENET_GPU_TFLOPS = 50.0
IMAGENET_MIN_SIZE = 112
# Images one CPU core decodes and augments for the streaming image-folder loader (resnet_core.stream):
# `python bench loader`, one worker on a 2-core Xeon VM, ≈ 280/s (docs/benchmarks.md, "Loader");
# `plan --decode-rate` changes it.
DECODE_IMAGES_PER_CORE = 280.0
# The same for CPU sweeps (resources.gpu 0), per core: ResNet-20/56 training on digits at 16 and
# 32 px, one thread on a shared 2-core Xeon, measured 20–28 GFLOP/s; `plan --cpu-gflops` changes it.
DEFAULT_CPU_GFLOPS = 25.0


@dataclass
class Trial:
    """One point of the search, resolved and named: what Tune runs and MLflow records."""

    index: int
    name: str
    config: dict[str, Any]  # the full, resolved flat config: what Tune gets and MLflow logs
    varying: dict[str, Any]  # the searched keys and their values


@dataclass
class Plan:
    """What `plan` prints and `run` starts from: the trials, their epochs, models and cost."""

    parsed: ParsedSpec
    trials: list[Trial] | None  # None for optuna (drawn while it runs)
    num_trials: int
    configs: list[dict[str, Any]]  # resolved configs: the trials', or Optuna's probe points
    epochs_per_trial: int
    models: dict[str, dict] = field(default_factory=dict)  # model label → params, macs
    model_of: list[str] = field(default_factory=list)  # the model label of each config
    total_epochs: int = 0
    asha_epochs: float | None = None
    train_images: int = 0
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0  # core-hours, for sweeps without GPUs
    # The GPU-hours by pass: training, val + test every epoch, the final 10-crop test (folders).
    gpu_hours_by_pass: dict[str, float] = field(default_factory=dict)
    loader: dict | None = None  # image folders on GPUs: what the CPUs decode against what the GPU trains
    # The measured prediction (sweepfile.calibration: predicted_wall_s, predicted_trial_s, the
    # rates), when `plan --calibrate` measured or `run` found the rates: in plan.json and --json.
    prediction: dict | None = None
    warnings: list[str] = field(default_factory=list)  # what the user should know before it runs

    @property
    def spec(self):
        return self.parsed.spec

    @property
    def arrays(self) -> list[list[Trial]] | None:
        """With resources.array K > 1: the trials grouped into arrays, each one Tune trial. Trials
        of one shape (equal ``resnet_core.array.array_key``) share arrays in plan order, K to an
        array; None without arrays."""
        size = self.spec.resources.array
        if size == 1 or self.trials is None:
            return None
        from resnet_core.array import array_key  # torch: only sweeps with arrays pay for it

        arrays: list[list[Trial]] = []
        filling: dict[tuple, list[Trial]] = {}  # shape → its array still taking members
        for trial in self.trials:
            key = array_key(RunConfig.from_flat(trial.config))
            if key not in filling or len(filling[key]) == size:
                filling[key] = []
                arrays.append(filling[key])
            filling[key].append(trial)
        return arrays


def make_plan(
    parsed: ParsedSpec,
    *,
    gpu_tflops: float | None = None,
    cpu_gflops: float = DEFAULT_CPU_GFLOPS,
    decode_rate: float = DECODE_IMAGES_PER_CORE,
    with_models: bool = True,
    first: int | None = None,
) -> Plan:
    """The sweep's trials, epochs and cost; ``first``: only the first so many trials (a smoke test).
    ``gpu_tflops``: the sustained rate per GPU for every model (default: assumed_gpu_tflops of each)."""
    spec = parsed.spec
    fixed = spec.fixed_flat()
    optuna = spec.search.algorithm == "optuna"
    check_depth_draws(parsed)
    points = optuna_probe_points(parsed) if optuna else search_points(parsed)[:first]
    if not points:
        raise parsed.error(("search",), "no trials left: every point of the space is excluded")
    trials, configs = [], []
    for point in points:
        try:
            config = _checked_config(fixed, point)
        except ConfigError as err:
            raise _trial_error(parsed, err, point) from None
        configs.append(config)
        if not optuna:
            trials.append(Trial(len(trials), trial_name(config, point), config, point))
    _dedupe_names(trials)
    num_trials = spec.search.num_samples if optuna else len(trials)
    if spec.budget.max_trials is not None and num_trials > spec.budget.max_trials:
        raise parsed.error(
            ("budget", "max_trials"), f"the sweep has {num_trials} trials, over the budget of {spec.budget.max_trials}"
        )
    if spec.resources.gpu == 0 and any(c["train.device"].startswith("cuda") for c in configs):
        raise parsed.error(
            ("train", "device"),
            "trials on cuda need resources.gpu of at least 1 (a trial without "
            "one sees no GPU); set resources.gpu or train.device: auto",
        )

    runs = [RunConfig.from_flat(c) for c in configs]
    epochs = []
    for run in runs:
        train_images = split_sizes(run.dataset)[0]
        epochs.append(planned_epochs(run.train, steps_per_epoch(train_images, run.train.batch_size)))
    plan = Plan(parsed, None if optuna else trials, num_trials, configs, max(epochs))
    plan.train_images = split_sizes(runs[0].dataset)[0]
    max_t = spec.scheduler.max_t
    if spec.scheduler.name == "asha" and max_t is not None and max_t < plan.epochs_per_trial:
        # One rule: the trials ASHA keeps train their whole schedule. A shorter max_t would end
        # them before their learning rate drops and still call them completed.
        raise parsed.error(
            ("scheduler", "max_t"),
            f"{max_t} is below the {plan.epochs_per_trial} epochs a trial trains: "
            "ASHA would end the kept trials before their learning-rate schedule does; set max_t to "
            f"{plan.epochs_per_trial} or leave it out (it defaults to the trials' epochs)",
        )
    plan.total_epochs = (
        sum(min(e, plan.epochs_per_trial) for e in epochs) if not optuna else num_trials * plan.epochs_per_trial
    )
    if spec.scheduler.name == "asha":
        # ASHA stops whole arrays: it sees one Tune trial per array, whose epochs each member trains.
        arrays = plan.arrays
        tune_trials = len(arrays) if arrays else num_trials
        plan.asha_epochs = (
            asha_expected_epochs(tune_trials, plan.epochs_per_trial, spec.scheduler) * num_trials / tune_trials
        )
    plan.warnings = _warnings(plan, runs)
    if with_models:
        _count_models(plan, runs, epochs, gpu_tflops, cpu_gflops, decode_rate)
    return plan


def _checked_config(fixed: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """The resolved config of one point, checked as a trial would be, and for its size."""
    config = resolve_trial(fixed, point)
    run = RunConfig.from_flat(config)
    if run.model.num_classes not in (None, num_classes(run.dataset)):
        raise ConfigError(
            "model.num_classes",
            f"{run.model.num_classes} disagrees with {run.dataset.name}'s {num_classes(run.dataset)} classes",
        )
    check_trial_size(run)
    return config


def _trial_error(parsed: ParsedSpec, err: ConfigError, point: dict[str, Any]) -> SpecError:
    spec = parsed.spec
    key = "model.n" if err.field == "model.depth" and "model.n" in point else err.field
    section, _, name = key.partition(".")
    if key in point:
        path = ("search", "space", key)
    elif section in ("model", "dataset", "train") and name in getattr(spec, section):
        path = (section, name)
    else:  # a setting the file leaves out: named, at its section's line
        path = (section, name) if section in ("model", "dataset", "train") else ()
    try:
        _checked_config(parsed.spec.fixed_flat(), {})
        alone = None
    except ConfigError as fixed_err:
        alone = (fixed_err.field, fixed_err.reason)
    shown = ", ".join(f"{k}={v}" for k, v in point.items())
    # Name the trial only when its searched values matter: an error the fixed settings make on
    # their own is about them, whatever is searched.
    where = f" (in the trial {shown})" if shown and alone != (err.field, err.reason) else ""
    return parsed.error(path, f"{err.reason}{where}")


# Settings that act only together with another one; given without it they would be ignored
# without a word: (key, what it needs, whether a resolved flat config has that).
_NEEDS = (
    ("model.shortcut", "model.residual: true", lambda c: c["model.residual"]),
    ("model.bottleneck_stride", "bottleneck blocks", lambda c: c["model.block"].endswith("bottleneck")),
    ("train.milestones", "train.schedule: multistep", lambda c: c["train.schedule"] == "multistep"),
    ("train.gamma", "train.schedule: multistep", lambda c: c["train.schedule"] == "multistep"),
    ("train.warmup_lr", "train.warmup_iterations above 0", lambda c: c["train.warmup_iterations"] > 0),
    ("dataset.synthetic_size", "dataset.name: synthetic", lambda c: c["dataset.name"] == "synthetic"),
    ("dataset.synthetic_classes", "dataset.name: synthetic", lambda c: c["dataset.name"] == "synthetic"),
    ("dataset.cache_dir", "dataset.name: cifar10 or cifar100", lambda c: c["dataset.name"].startswith("cifar")),
    *(
        (f"dataset.{key}", "dataset.name: imagenet or imagefolder", lambda c: c["dataset.name"] in FOLDER_DATASETS)
        for key in ("root", "val_per_class", "scale_range", "lighting", "workers")
    ),
)


def _warnings(plan: Plan, runs: list[RunConfig]) -> list[str]:
    """Lines for what the sweep will do that its file does not say: options that have no
    effect, a default that replaces what was asked, a budget that ends it early."""
    spec, written = plan.spec, plan.parsed.written
    given = {key for key in FIELD_TYPES if written(tuple(key.split(".", 1))) or written(("search", "space", key))}
    notes = [
        f"{key} has no effect: it applies only with {needs}"
        for key, needs, applies in _NEEDS
        if key in given and not any(map(applies, plan.configs))
    ]
    if spec.scheduler.name == "none":
        notes += [
            f"scheduler.{key} has no effect: it applies only with scheduler.name: asha"
            for key in ("grace_period", "reduction_factor", "max_t")
            if written(("scheduler", key))
        ]
    if spec.search.algorithm == "grid" and written(("search", "seed")):
        notes.append(
            "search.seed has no effect on a grid (it seeds random and Optuna draws; search.seeds repeats trials)"
        )
    if all(run.train.epochs is None and run.train.iterations is None for run in runs):
        notes.append(
            f"train: no epochs or iterations given: trials train the paper's {PAPER_ITERATIONS:,} "
            f"iterations (up to {plan.epochs_per_trial:,} epochs here)"
        )
    for run in runs:
        # Trials train whole epochs: iterations round to the nearest (at least one).
        steps = steps_per_epoch(split_sizes(run.dataset)[0], run.train.batch_size)
        trained = planned_epochs(run.train, steps) * steps
        if run.train.iterations and abs(trained - run.train.iterations) > run.train.iterations / 10:
            notes.append(
                f"train.iterations: {run.train.iterations:,} are trained as {trained // steps:,} whole "
                f"epoch(s) of {steps:,} steps, {trained:,} iterations"
            )
            break
    max_epochs = spec.budget.max_epochs
    if max_epochs is not None and max_epochs < plan.epochs_per_trial:
        notes.append(
            f"budget.max_epochs: {max_epochs} epochs in all stop the sweep before its first trial "
            f"ends ({plan.epochs_per_trial} epochs)"
        )
    return notes + _missing_imagenet(runs)


def _missing_imagenet(runs: list[RunConfig]) -> list[str]:
    """ImageNet is planned with ILSVRC-2012's counts, its folder unread: say when the folder `run`
    needs is not there (`run` stops on it, exit 1, before Ray starts)."""
    notes = []
    for root in dict.fromkeys(run.dataset.root for run in runs if run.dataset.name == "imagenet"):
        missing = [
            path for path in (root, os.path.join(root, "train"), os.path.join(root, "val")) if not os.path.isdir(path)
        ]
        if missing:
            notes.append(
                f"dataset.root: {missing[0]} is not there: planned with ILSVRC-2012's counts "
                f"({ILSVRC2012.train:,} training and {ILSVRC2012.test:,} val images, {ILSVRC2012.classes:,} "
                f"classes); `run` needs {root} with train/ and val/ of class folders"
            )
    return notes


def _dedupe_names(trials: list[Trial]) -> None:
    seen: dict[str, int] = {}
    for t in trials:
        seen[t.name] = seen.get(t.name, 0) + 1
    counter: dict[str, int] = {}
    for t in trials:
        if seen[t.name] > 1:
            counter[t.name] = counter.get(t.name, 0) + 1
            t.name = f"{t.name}-{counter[t.name]}"


def assumed_gpu_tflops(run: RunConfig) -> float:
    """The sustained TFLOP/s per GPU the estimate assumes for ``run``'s model (no --gpu-tflops)."""
    imagenet_size = run.model.arch == "imagenet" and run.dataset.image_size >= IMAGENET_MIN_SIZE
    return IMAGENET_GPU_TFLOPS if imagenet_size else DEFAULT_GPU_TFLOPS


PASSES = ("train", "eval_every_epoch", "ten_crop")  # the keys of Plan.gpu_hours_by_pass


def _count_models(
    plan: Plan,
    runs: list[RunConfig],
    epochs: list[int],
    gpu_tflops: float | None,
    cpu_gflops: float,
    decode_rate: float,
) -> None:
    labels: dict[tuple, str] = {}
    first: dict[str, RunConfig] = {}
    flops = dict.fromkeys(PASSES, 0.0)
    gpu_seconds = dict.fromkeys(PASSES, 0.0)
    resources = plan.spec.resources
    for run, run_epochs in zip(runs, epochs):
        # Keyed by everything the count depends on, not the short name: models that differ only
        # in bottleneck_stride, width, … or in the data's size and classes count differently.
        key = (repr(run.model), num_classes(run.dataset), run.dataset.image_size)
        if key not in labels:
            labels[key] = _model_label(run, first)
            footprint = model_footprint(run.model, num_classes(run.dataset), run.dataset.image_size)
            plan.models[labels[key]] = {"params": footprint.params, "macs": footprint.macs}
        plan.model_of.append(labels[key])
        model = plan.models[labels[key]]
        train, val, test = split_sizes(run.dataset)
        # 2 flops per multiply-add; training ≈ 3 forward passes (forward + backward); val and the
        # test set's centre crops every epoch; image folders end with 10-crop testing of the final
        # model (2015 §3.4: four corners and the centre, and their flips).
        run_flops = {
            "train": 2 * model["macs"] * 3 * train * run_epochs,
            "eval_every_epoch": 2 * model["macs"] * (val + test) * run_epochs,
            "ten_crop": 2 * model["macs"] * 10 * test if run.dataset.from_folder else 0,
        }
        tflops = gpu_tflops or assumed_gpu_tflops(run)
        for name, value in run_flops.items():
            flops[name] += value
            gpu_seconds[name] += value / (tflops * 1e12)
        trial_gpu_hours = sum(run_flops.values()) / (tflops * 1e12) / 3600
        model.update(
            gpu_tflops=tflops,
            train_images_per_s_per_gpu=tflops * 1e12 / (6 * model["macs"]),
            trial_gpu_hours=max(model.get("trial_gpu_hours", 0.0), trial_gpu_hours),
        )
        # Wall-clock of one trial alone on its GPUs (resources.workers × gpu), data-parallel.
        model["trial_hours"] = model["trial_gpu_hours"] / resources.trial_gpus if resources.trial_gpus else None
    # Optuna: the probe runs stand for the trials it will draw; ASHA: the share of the epochs it is
    # expected to train, and of the trials that reach the end (only those test 10 crops).
    scale = plan.num_trials / len(runs) if plan.trials is None else 1.0
    shares = dict.fromkeys(PASSES, 1.0)
    if plan.asha_epochs:
        arrays = plan.arrays
        tune_trials = len(arrays) if arrays else plan.num_trials
        shares.update(
            train=plan.asha_epochs / plan.total_epochs,
            eval_every_epoch=plan.asha_epochs / plan.total_epochs,
            ten_crop=asha_finishers(tune_trials, plan.epochs_per_trial, plan.spec.scheduler) / tune_trials,
        )
    plan.gpu_hours_by_pass = {name: gpu_seconds[name] * scale * shares[name] / 3600 for name in PASSES}
    plan.gpu_hours = sum(plan.gpu_hours_by_pass.values())
    plan.cpu_hours = sum(flops[name] * scale * shares[name] for name in PASSES) / (cpu_gflops * 1e9) / 3600
    if resources.gpu:
        _check_loader(plan, runs, decode_rate)


def _check_loader(plan: Plan, runs: list[RunConfig], decode_rate: float) -> None:
    """Image folders are decoded on the CPUs of each worker (resnet_core.stream): what they decode
    against what the worker's GPU trains at the assumed rate, with a warning where the GPU would
    wait for the CPUs."""
    resources = plan.spec.resources
    models: dict[str, dict] = {}
    for run, label in zip(runs, plan.model_of):
        if not run.dataset.from_folder or label in models:
            continue
        workers = run.dataset.workers
        # dataset.workers decoding processes (0: the training process decodes), on the worker's CPUs.
        cpus = resources.cpu if workers is None else min(resources.cpu, max(workers, 1))
        decodes = cpus * decode_rate
        trains = plan.models[label]["train_images_per_s_per_gpu"] * resources.gpu
        models[label] = {
            "decoding_cpus": cpus,
            "decodes_images_per_s": decodes,
            "gpu_trains_images_per_s": trains,
            "starved": decodes < trains,
        }
        if decodes < trains:
            limit = "dataset.workers" if workers is not None and workers < resources.cpu else "resources.cpu"
            plan.warnings.append(
                f"{limit}: {cpus:g} CPU(s) per worker decode ≈ {decodes:,.0f} images/s ({decode_rate:g} per core), "
                f"below the ≈ {trains:,.0f} images/s {label} trains per GPU at {plan.models[label]['gpu_tflops']:g} "
                f"TFLOP/s: the GPU would wait for JPEG decoding; give each worker {math.ceil(trains / decode_rate)} CPUs"
            )
    if models:
        plan.loader = {"decode_images_per_core": decode_rate, "cpus_per_worker": resources.cpu, "models": models}


def _model_label(run: RunConfig, first: dict[str, RunConfig]) -> str:
    """The model's name; a later model of the same name also says how it differs from the first."""
    name = run.model.name
    if name not in first:
        first[name] = run
        return name
    other = first[name]
    diff = [f"{k}={v}" for k, v in vars(run.model).items() if getattr(other.model, k) != v]
    if run.dataset.image_size != other.dataset.image_size:
        diff.append(f"{run.dataset.image_size}px")
    if num_classes(run.dataset) != num_classes(other.dataset):
        diff.append(f"{num_classes(run.dataset)} classes")
    return f"{name} ({', '.join(diff)})"


def asha_finishers(num_trials: int, max_t: int, scheduler) -> float:
    """Trials ASHA is expected to let train to ``max_t`` (asha_expected_epochs' last rung)."""
    alive, rung = float(num_trials), scheduler.grace_period
    while rung < max_t:
        alive, rung = max(1.0, alive / scheduler.reduction_factor), rung * scheduler.reduction_factor
    return alive


def asha_trial_epochs(num_trials: int, max_t: int, scheduler) -> list[int]:
    """The epochs each trial (in the order Tune starts them) is expected to train with ASHA:
    the rungs' survivors of asha_expected_epochs, rounded, taken to be the first trials — Tune's
    ASHA is asynchronous, and the first trials to reach a rung are compared with few and go on."""
    epochs, alive, rung = [scheduler.grace_period] * num_trials, float(num_trials), scheduler.grace_period
    while rung < max_t:
        alive, rung = max(1.0, alive / scheduler.reduction_factor), min(max_t, rung * scheduler.reduction_factor)
        epochs[: round(alive)] = [int(rung)] * round(alive)
    return [min(e, max_t) for e in epochs]


def asha_expected_epochs(num_trials: int, max_t: int, scheduler) -> float:
    """Epochs ASHA is expected to spend: all trials reach the first rung, 1/η of them each next
    rung (Li et al. 2020); asynchronous promotion makes the real number somewhat higher."""
    rungs, r = [], scheduler.grace_period
    while r < max_t:
        rungs.append(r)
        r *= scheduler.reduction_factor
    total, previous, alive = 0.0, 0, float(num_trials)
    for rung in rungs + [max_t]:
        total += alive * (rung - previous)
        previous, alive = rung, max(1.0, alive / scheduler.reduction_factor)
    return total


def plan_json(plan: Plan) -> str:
    return json.dumps(plan_summary(plan), indent=2)


def plan_summary(plan: Plan) -> dict:
    spec = plan.spec
    arrays = plan.arrays
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
        "gpu_hours_by_pass": plan.gpu_hours_by_pass,
        "gpus_per_trial": spec.resources.trial_gpus,
        "cpu_hours": plan.cpu_hours,
        "loader": plan.loader,
        "budget": spec.budget.model_dump(),
        "warnings": plan.warnings,
        "models": plan.models,
        "space": spec.search.space if plan.trials is None else None,
        "trials": [
            {"index": t.index, "name": t.name, "varying": t.varying, "config": t.config} for t in plan.trials or []
        ],
        **({"arrays": [[t.name for t in array] for array in arrays]} if arrays else {}),
        **(plan.prediction or {}),
    }
