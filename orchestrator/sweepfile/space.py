"""The search space of a sweep file: its grid or random points (seeds, exclusions, depth derived
from ``model.n``), each point resolved into a trial's flat config and named, and the space Optuna
draws from."""

from __future__ import annotations

import itertools
import math
import random
import re
from pathlib import PurePath
from typing import Any

from orchestrator.sweepfile.model_counts import MAX_DEPTH
from orchestrator.sweepfile.spec import ParsedSpec
from resnet_core.config import ModelConfig, RunConfig, layers_per_block
from resnet_core.errors import ConfigError

__all__ = [
    "OptunaSpace",
    "check_depth_draws",
    "optuna_probe_points",
    "optuna_space",
    "resolve_trial",
    "search_points",
    "trial_name",
]


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
        flat["model.depth"] = _depth_of_n(block, int(n))
    return RunConfig.from_flat(flat).to_flat()


def _depth_of_n(block: str, n: int) -> int:
    """A CIFAR net's depth from its blocks per stage: 6n+2 basic, 9n+2 bottleneck."""
    return 3 * layers_per_block(block) * n + 2


def trial_name(config: dict[str, Any], varying: dict[str, Any]) -> str:
    """Readable and deterministic, e.g. ``resnet56-basic-A-lr0.1-s0``."""
    cfg = RunConfig.from_flat(config)
    parts = [cfg.model.name, f"lr{cfg.train.lr:g}"]
    skip = {
        "model.depth",
        "model.n",
        "model.block",
        "model.shortcut",
        "model.residual",
        "model.width",
        "train.lr",
        "train.seed",
    }
    for key, value in varying.items():
        if key == "dataset.name":
            parts.insert(1, str(value))
        elif key not in skip:
            short = key.split(".", 1)[1].replace("_", "")
            if isinstance(value, str) and "/" in value:  # a searched folder: its name, in characters a
                # folder name and a storage URI take as they are (Tune refuses '/'; pyarrow a space in s3://)
                value = re.sub(r"[^A-Za-z0-9._-]+", "_", PurePath(value).name or value)
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


def search_points(parsed: ParsedSpec) -> list[dict[str, Any]]:
    """The grid's points or ``num_samples`` seeded draws, each once per ``search.seeds``, less
    those an exclude rule matches (grid and random search)."""
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


def optuna_probe_points(parsed: ParsedSpec) -> list[dict[str, Any]]:
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


def check_depth_draws(parsed: ParsedSpec) -> None:
    """An `int` range over model.depth mostly draws depths no network has (6n+2, 9n+2, or one of
    the ImageNet depths): such trials could only fail. Say how many are valid and what to draw."""
    spec = parsed.spec
    dim = spec.search.space.get("model.depth")
    # With the block searched, which depths are valid depends on the draw: the trials say.
    if not (isinstance(dim, dict) and "int" in dim) or "stages" in spec.model or "model.block" in spec.search.space:
        return
    low, high = map(int, dim["int"])
    if high > MAX_DEPTH:
        return  # the size check names the limit
    valid = []
    for depth in range(low, high + 1):
        try:
            ModelConfig(**{**spec.model, "depth": depth})
        except ConfigError as err:
            if err.field != "model.depth":
                return  # another model setting is wrong: its own check reports it
            continue
        valid.append(depth)
    total = high - low + 1
    if len(valid) == total:
        return
    if spec.model.get("arch", ModelConfig.arch) == "cifar":
        block = ModelConfig(block=spec.model.get("block"), depth=None).block
        ns = [n for n in range(1, high) if low <= _depth_of_n(block, n) <= high]
        step = _depth_of_n(block, 1) - 2
        instead = (
            f"draw model.n: {{int: [{ns[0]}, {ns[-1]}]}} instead (depth {step}n+2)"
            if ns
            else f"no {step}n+2 depth lies in that range"
        )
    else:
        instead = (
            f"use a list of depths instead: model.depth: {valid}" if valid else "no ImageNet depth lies in that range"
        )
    raise parsed.error(
        ("search", "space", "model.depth", "int"),
        f"[{low}, {high}] draws invalid depths: only {len(valid)} of its {total} values "
        f"({len(valid) / total:.0%}) build a network; {instead}",
    )


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


def _distribution(dim: Any):
    """The Optuna distribution OptunaSpace suggests a dimension from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dim, list):
        return CategoricalDistribution(dim)
    kind, arg = next(iter(dim.items()))
    if kind == "choice":
        return CategoricalDistribution(arg)
    if kind == "int":
        return IntDistribution(int(arg[0]), int(arg[1]))
    return FloatDistribution(float(arg[0]), float(arg[1]), log=kind == "loguniform")


OPTUNA_STUDY = "resnet-sweep"


def optuna_warm_start(parsed: ParsedSpec, finished: list[tuple[dict[str, Any], float]]):
    """An Optuna storage holding the study ``OPTUNA_STUDY`` with ``finished`` trials (their
    config, their metric) already told: a grown Optuna sweep's sampler draws knowing them (Tune's
    OptunaSearch loads the study by name). Draws outside the file's space are left out."""
    import optuna

    space = parsed.spec.search.space
    distributions = {key: _distribution(dim) for key, dim in space.items()}
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=OPTUNA_STUDY, direction="minimize")
    for config, value in finished:
        params = {key: config[key] for key in space if key in config}
        try:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
        except ValueError:  # a key missing, or a value outside the file's space now
            continue
    return storage, len(study.trials)
