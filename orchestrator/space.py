"""Spec → trials: the grid or random draws (with seeds, exclusions and depth derived from
``model.n``), the Tune param_space / search algorithm, and the plan `resnet-sweep plan` prints."""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any

from resnet_core.analysis import count_macs, count_params
from resnet_core.data import num_classes, split_sizes
from resnet_core.errors import ConfigError
from resnet_core.resnet import ModelConfig, build_model, layers_per_block
from resnet_core.train import RunConfig, planned_epochs, steps_per_epoch

from .spec import ParsedSpec, SpecError

__all__ = ["Plan", "Trial", "make_plan", "optuna_space", "resolve_trial", "trial_name"]

# Assumed sustained training throughput for the GPU-hour estimate: small CIFAR ResNets reach a
# few TFLOP/s, far from a GPU's peak; `plan --gpu-tflops` changes it (calibrate with bench/).
DEFAULT_GPU_TFLOPS = 5.0


@dataclass
class Trial:
    index: int
    name: str
    config: dict[str, Any]  # the full, resolved flat config: what Tune gets and MLflow logs
    varying: dict[str, Any]  # the searched keys and their values


@dataclass
class Plan:
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

    @property
    def spec(self):
        return self.parsed.spec


def resolve_trial(fixed: dict[str, Any], assignment: dict[str, Any]) -> dict[str, Any]:
    """Fixed settings + one point of the space → a validated, fully resolved flat config.
    Raises ConfigError naming the offending field."""
    flat = {**fixed, **assignment}
    n = flat.pop("model.n", None)
    if n is not None:
        arch = flat.get("model.arch", "cifar")
        if arch != "cifar":
            raise ConfigError("model.n", "sets the depth of CIFAR nets only; give model.depth for ImageNet")
        block = ModelConfig(arch=arch, block=flat.get("model.block"), depth=None).block
        flat["model.depth"] = 3 * layers_per_block(block) * int(n) + 2
    return RunConfig.from_flat(flat).to_flat()


def trial_name(config: dict[str, Any], varying: dict[str, Any]) -> str:
    """Readable and deterministic, e.g. ``resnet56-basic-A-lr0.1-s0``."""
    cfg = RunConfig.from_flat(config)
    parts = [cfg.model.name, f"lr{cfg.train.lr:g}"]
    skip = {"model.depth", "model.n", "model.block", "model.shortcut", "model.residual", "model.width", "train.lr", "train.seed"}
    for key, value in varying.items():
        if key == "dataset.name":
            parts.insert(1, str(value))
        elif key not in skip:
            short = key.split(".", 1)[1].replace("_", "")
            parts.append(f"{short}{value:g}" if isinstance(value, float) else f"{short}{value}")
    parts.append(f"s{cfg.train.seed}")
    return "-".join(parts)


def _grid_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(space)
    values = [dim["choice"] if isinstance(dim, dict) else dim for dim in space.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _draw(dim: Any, rng: random.Random) -> Any:
    if isinstance(dim, list):
        return rng.choice(dim)
    kind, arg = next(iter(dim.items()))
    if kind == "choice":
        return rng.choice(arg)
    if kind == "int":
        return rng.randint(int(arg[0]), int(arg[1]))
    if kind == "uniform":
        value = rng.uniform(*arg)
    else:  # loguniform
        value = math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1])))
    return float(f"{value:.4g}")  # readable names and params; far finer than any effect


def _excluded(point: dict[str, Any], rules: list[dict[str, Any]]) -> bool:
    return any(all(point.get(k) == v for k, v in rule.items()) for rule in rules)


def _trial_error(parsed: ParsedSpec, err: ConfigError, point: dict[str, Any]) -> SpecError:
    spec = parsed.spec
    key = "model.n" if err.field == "model.depth" and "model.n" in point else err.field
    section, _, name = key.partition(".")
    if key in point:
        path = ("search", "space", key)
    elif section in ("model", "dataset", "train") and name in getattr(spec, section):
        path = (section, name)
    else:
        path = (section,) if section in ("model", "dataset", "train") else ()
    shown = ", ".join(f"{k}={v}" for k, v in point.items())
    where = f" (in the trial {shown})" if shown else ""
    return parsed.error(path, f"{err.reason}{where}")


def _points(parsed: ParsedSpec) -> list[dict[str, Any]]:
    search = parsed.spec.search
    if search.algorithm == "grid":
        points = _grid_points(search.space)
    else:
        rng = random.Random(search.seed)
        points = [{k: _draw(d, rng) for k, d in search.space.items()} for _ in range(search.num_samples)]
    if search.seeds is not None:
        points = [{**p, "train.seed": s} for p in points for s in search.seeds]
    fixed = parsed.spec.fixed_flat()
    return [p for p in points if not _excluded(_resolved_view(fixed, p), search.exclude)]


def _resolved_view(fixed: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """What exclude rules are matched against: the point with every default filled in (or, when
    the point is invalid, what it says), so rules can name fixed and default settings too."""
    try:
        resolved = resolve_trial(fixed, point)
    except ConfigError:
        resolved = {}
    return {**resolved, **fixed, **point}


def _optuna_probe_points(parsed: ParsedSpec) -> list[dict[str, Any]]:
    """Corner points of an Optuna space, validated up front so bad bounds fail before Ray."""
    space = parsed.spec.search.space
    lows = {k: (d[0] if isinstance(d, list) else _bound(d, 0)) for k, d in space.items()}
    highs = {k: (d[-1] if isinstance(d, list) else _bound(d, 1)) for k, d in space.items()}
    points = [lows, highs]
    for key, dim in space.items():
        values = dim if isinstance(dim, list) else dim.get("choice", [])
        points += [{**lows, key: v} for v in values]
    return points


def _bound(dim: dict, i: int) -> Any:
    kind, arg = next(iter(dim.items()))
    return arg[i] if kind != "choice" else arg[0]


def make_plan(parsed: ParsedSpec, *, gpu_tflops: float = DEFAULT_GPU_TFLOPS, with_models: bool = True) -> Plan:
    spec = parsed.spec
    fixed = spec.fixed_flat()
    optuna = spec.search.algorithm == "optuna"
    points = _optuna_probe_points(parsed) if optuna else _points(parsed)
    if not points:
        raise parsed.error(("search",), "no trials left: every point of the space is excluded")
    trials, configs = [], []
    for point in points:
        try:
            config = resolve_trial(fixed, point)
            run = RunConfig.from_flat(config)
            if run.model.num_classes not in (None, num_classes(run.dataset)):
                raise ConfigError("model.num_classes", f"{run.model.num_classes} disagrees with {run.dataset.name}'s {num_classes(run.dataset)} classes")
        except ConfigError as err:
            raise _trial_error(parsed, err, point) from None
        configs.append(config)
        if not optuna:
            trials.append(Trial(len(trials), trial_name(config, point), config, point))
    _dedupe_names(trials)
    num_trials = spec.search.num_samples if optuna else len(trials)
    if spec.budget.max_trials is not None and num_trials > spec.budget.max_trials:
        raise parsed.error(("budget", "max_trials"), f"the sweep has {num_trials} trials, over the budget of {spec.budget.max_trials}")

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
        raise parsed.error(("scheduler", "max_t"), f"{max_t} is below the {plan.epochs_per_trial} epochs a trial trains: "
                           "ASHA would end the kept trials before their learning-rate schedule does; set max_t to "
                           f"{plan.epochs_per_trial} or leave it out (it defaults to the trials' epochs)")
    plan.total_epochs = sum(min(e, plan.epochs_per_trial) for e in epochs) if not optuna else num_trials * plan.epochs_per_trial
    if spec.scheduler.name == "asha":
        plan.asha_epochs = asha_expected_epochs(num_trials, plan.epochs_per_trial, spec.scheduler)
    if with_models:
        _count_models(plan, runs, gpu_tflops)
    return plan


def _dedupe_names(trials: list[Trial]) -> None:
    seen: dict[str, int] = {}
    for t in trials:
        seen[t.name] = seen.get(t.name, 0) + 1
    counter: dict[str, int] = {}
    for t in trials:
        if seen[t.name] > 1:
            counter[t.name] = counter.get(t.name, 0) + 1
            t.name = f"{t.name}-{counter[t.name]}"


def _count_models(plan: Plan, runs: list[RunConfig], gpu_tflops: float) -> None:
    flops = 0.0
    labels: dict[tuple, str] = {}
    first: dict[str, RunConfig] = {}
    for run in runs:
        # Keyed by everything the count depends on, not the short name: models that differ only
        # in bottleneck_stride, width, … or in the data's size and classes count differently.
        key = (repr(run.model), num_classes(run.dataset), run.dataset.image_size)
        if key not in labels:
            labels[key] = _model_label(run, first)
            model = build_model(run.model, num_classes=num_classes(run.dataset))
            plan.models[labels[key]] = {
                "params": count_params(model),
                "macs": count_macs(model, run.dataset.image_size),  # the data's size, whatever the arch
            }
        plan.model_of.append(labels[key])
        train, val, test = split_sizes(run.dataset)
        # Training costs ≈ 3 forward passes (forward + backward), 2 flops per multiply-add.
        per_epoch = 2 * plan.models[labels[key]]["macs"] * (3 * train + val + test)
        flops += per_epoch * plan.epochs_per_trial
    if plan.trials is None:  # optuna: all probe runs share one model family; scale to the trial count
        flops = flops / len(runs) * plan.num_trials
    budget = plan.asha_epochs / plan.total_epochs if plan.asha_epochs else 1.0
    plan.gpu_hours = flops * budget / (gpu_tflops * 1e12) / 3600


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


class OptunaSpace:
    """A define-by-run space for OptunaSearch: suggests the searched keys and returns the fixed
    settings as constants. A class, not a closure, so Tune can pickle the searcher's state.
    Trials are validated when they start (the trainable)."""

    def __init__(self, space: dict[str, Any], fixed: dict[str, Any]) -> None:
        self.space, self.fixed = space, fixed

    def __call__(self, trial) -> dict[str, Any]:
        for key, dim in self.space.items():
            if isinstance(dim, list):
                trial.suggest_categorical(key, dim)
                continue
            kind, arg = next(iter(dim.items()))
            if kind == "choice":
                trial.suggest_categorical(key, arg)
            elif kind == "int":
                trial.suggest_int(key, int(arg[0]), int(arg[1]))
            else:
                trial.suggest_float(key, float(arg[0]), float(arg[1]), log=kind == "loguniform")
        return self.fixed


def optuna_space(parsed: ParsedSpec) -> OptunaSpace:
    return OptunaSpace(parsed.spec.search.space, parsed.spec.fixed_flat())
