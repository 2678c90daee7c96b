"""YAML → validated sweep spec. Every error names the YAML path and line and, where it can,
the valid values; the CLI turns it into exit code 2 before anything starts."""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import shlex
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from orchestrator.sweepfile.overrides import Override, OverrideError, apply_overrides, parse_override
from resnet_core import metrics as M
from resnet_core.config import RunConfig

__all__ = ["SpecError", "SweepSpec", "load_spec", "parse_spec"]

# Keys a search space may vary besides the config fields: `model.n` sets the depth from the
# blocks per stage (6n+2 basic / 9n+2 bottleneck on CIFAR, 2015 §4.2, 2016 §4).
DERIVED_KEYS = {"model.n": int}
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
OPTIMIZABLE_METRICS = (M.VAL_ERROR, M.VAL_LOSS, M.TRAIN_ERROR, M.TRAIN_LOSS)
# Bounds on what a sweep file may make us read and expand, far above any real sweep (the
# shipped ones have under 200 values), far below what exhausts memory.
MAX_FILE_BYTES = 1_000_000
MAX_VALUES = 100_000
MAX_TRIALS = 10_000  # a few thousand trials make a big sweep


class SpecError(Exception):
    """A bad sweep file or setting: ``path`` is the dotted YAML path, ``line`` 1-based or None."""

    def __init__(self, path: str, message: str, line: int | None = None, source: str | None = None) -> None:
        self.path, self.message, self.line, self.source = path, message, line, source
        where = f"{source}:{line}: " if source and line else (f"line {line}: " if line else "")
        super().__init__(f"{where}{path}: {message}" if path else f"{where}{message}")


class _Strict(BaseModel):
    # frozen: a spec is read, never changed; a changed sweep (--smoke-test, roots made absolute)
    # is a new spec (model_copy), so what was parsed is what the plan and the saved file say.
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSpec(_Strict):
    """What the sweep compares trials by: each trial's best epoch on it, ASHA's cuts, the best trial."""

    name: Literal[OPTIMIZABLE_METRICS] = Field(  # type: ignore[valid-type]
        M.VAL_ERROR, description="the metric trials are ranked by"
    )
    mode: Literal["min"] = Field("min", description="lower is better: every metric here is an error or a loss")


class SearchSpec(_Strict):
    """Which trials the sweep runs: the settings it varies and how points are chosen."""

    algorithm: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid: every point of the space; random: seeded draws; optuna: TPE's draws"
    )
    space: dict[str, Any] = Field(
        default_factory=dict, description="flat key (`model.depth`) → a list of values or a distribution"
    )
    num_samples: int = Field(1, ge=1, description="random/optuna: trials drawn; grid: must stay 1 (use seeds)")
    seeds: list[int] | None = Field(None, description="every configuration once per seed (sets train.seed)")
    exclude: list[dict[str, Any]] = Field(
        default_factory=list, description="grid/random: drop the points matching any rule ({flat key: value, …})"
    )
    seed: int = Field(0, description="seed of the random / TPE sampler itself (not of the trials)")


class SchedulerSpec(_Strict):
    """Who stops trials early: ASHA, or nobody (every trial trains its whole schedule)."""

    name: Literal["asha", "none"] = Field("none", description="asha: stop poor trials at rungs; none: train all")
    time_attr: Literal["epoch"] = Field(
        "epoch", description="ASHA's unit of time: the only unit trials report in, kept explicit for readers"
    )
    grace_period: int = Field(1, ge=1, description="epochs every trial trains before ASHA may stop it")
    reduction_factor: float = Field(3, gt=1, description="ASHA keeps the best 1/reduction_factor at each rung")
    max_t: int | None = Field(
        None, ge=1, description="ASHA's last epoch; not below the trials' epochs (default: the trials' epochs)"
    )


class ResourcesSpec(_Strict):
    """What a trial holds while it runs, per worker process: a trial is one process unless
    ``workers`` > 1."""

    cpu: float = Field(1, gt=0, description="CPUs per worker process")
    gpu: float = Field(0, ge=0, description="GPUs per worker process: 0, 1, or a fraction to share a GPU")
    # DDP through Ray Train's TorchTrainer.
    workers: int = Field(
        1,
        ge=1,
        description="data-parallel processes per trial, each with `cpu` and `gpu`; "
        "train.batch_size stays the global batch, split among them",
    )
    array: int = Field(
        1,
        ge=1,
        description="trials of one shape trained as one fused model (resnet_core.array), up to this many "
        "to an array; each array is one Tune trial with the resources above",
    )

    @field_validator("gpu")
    @classmethod
    def _one_device(cls, v: float) -> float:
        if v > 1:  # accepting 2 would hold a second GPU idle: a worker process uses one device
            raise ValueError(
                "a worker process trains on one device: use 1, or a fraction (0.5, 0.25) to pack trials "
                "on a GPU; for a trial on several GPUs set resources.workers (one GPU each)"
            )
        return v

    @property
    def trial_cpus(self) -> float:
        return self.cpu * self.workers

    @property
    def trial_gpus(self) -> float:
        return self.gpu * self.workers

    def fitting(self, cpus: float, gpus: float, max_concurrent: int | None = None) -> int:
        """Trials that run at once on ``cpus`` CPUs and ``gpus`` GPUs (at least one; at most
        ``max_concurrent`` when given): what a sweep on one machine runs side by side."""
        if max_concurrent:
            return max_concurrent
        fits = max(1, int(cpus // self.trial_cpus))
        if self.gpu:
            fits = min(fits, max(1, int(gpus // self.trial_gpus)))
        return fits


class TrackingSpec(_Strict):
    """Where MLflow records the sweep: one parent run, a child run per trial."""

    experiment: str | None = Field(None, description="MLflow experiment (default: the sweep's name)")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: sqlite:///mlflow.db in the working directory)"
    )
    log_best_checkpoint: bool = Field(
        False, description="log each trial's checkpoint of its best epoch to its MLflow run"
    )


class FailureSpec(_Strict):
    """What a failed trial gets: retries from its latest checkpoint (a lost node, a crashed worker)."""

    # Default: 3 on a cluster (nodes get lost), 0 on one machine (a failure there is the
    # trial's own, and would only repeat).
    max_failures: int | None = Field(
        None,
        ge=-1,
        description="retries of a failed trial; -1: unlimited, 0: a failure is final (default: 3 on a "
        "cluster, 0 on one machine)",
    )


class BudgetSpec(_Strict):
    """Limits on the sweep as a whole."""

    max_trials: int | None = Field(None, ge=1, description="refuse a sweep of more trials than this (before it starts)")
    max_epochs: int | None = Field(
        None, ge=1, description="stop the sweep once its trials have trained this many epochs"
    )


class SweepSpec(_Strict):
    """A sweep file: the sections below, each optional except ``name``."""

    name: str = Field(description="names the sweep's folder and MLflow runs (letters, digits, '-', '_', '.')")
    description: str = Field("", description="a line saying what the sweep is for (MLflow note, report title)")
    dataset: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    metric: MetricSpec = Field(default_factory=MetricSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent: int | None = Field(
        None, ge=1, description="trials running at once (default: what the machine fits; on a cluster, all)"
    )
    storage_path: str | None = Field(
        None, description="folder, NFS path or s3:// URI of the sweep's files (default: ./ray_results)"
    )
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            raise ValueError(f"{v!r} must be letters, digits, '-', '_' or '.' (it names folders and runs)")
        return v

    def fixed_flat(self) -> dict[str, Any]:
        """The fixed settings as flat keys (``model.depth``…)."""
        return {f"{section}.{k}": v for section in RunConfig.SECTIONS for k, v in getattr(self, section).items()}

    def spec_hash(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def _field_types() -> dict[str, Any]:
    """Flat key → type annotation, for every config field a sweep may set or vary."""
    types = dict(DERIVED_KEYS)
    for section, kind in RunConfig.SECTIONS.items():
        hints = typing.get_type_hints(kind)
        for f in fields(kind):
            types[f"{section}.{f.name}"] = hints[f.name]
    return types


FIELD_TYPES = _field_types()


def _numeric_kind(key: str) -> type | None:
    """int or float when the field is (optionally) that number type, else None."""
    hint = FIELD_TYPES[key]
    args = set(typing.get_args(hint)) - {type(None)} or {hint}
    return next((t for t in (float, int) if args == {t}), None)


def unknown_key(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(sorted(valid))}"
    return f"unknown key {key!r}; {hint}"


def check_value(flat_key: str, value: Any) -> Any:
    """Validate one value against its config field's type; raises ValueError with a reason."""
    try:
        return TypeAdapter(FIELD_TYPES[flat_key]).validate_python(value)
    except ValidationError as err:
        raise ValueError(f"{value!r}: {err.errors()[0]['msg'].lower()}") from None


class _LineMap:
    """YAML path → line number, from the composed node tree."""

    def __init__(self, root) -> None:
        self.lines: dict[tuple, int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node, path) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (key.value,)
                self.lines[sub] = key.start_mark.line + 1
                self._walk_value(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def _walk_value(self, node, path) -> None:
        line = self.lines[path]
        self._walk(node, path)
        self.lines[path] = line  # a key's line is where the key is written

    def line(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


class ParsedSpec:
    """A validated spec plus what is needed to point errors at its source: the file's text and
    lines, and the ``--set`` overrides applied on top of it. Never changed: ``replaced`` gives
    the same source with another spec."""

    __slots__ = ("_lines", "overrides", "source", "spec", "text")

    def __init__(
        self,
        spec: SweepSpec,
        text: str,
        source: str | None,
        lines: _LineMap,
        overrides: tuple[Override, ...] = (),
    ) -> None:
        values = (("spec", spec), ("text", text), ("source", source), ("_lines", lines), ("overrides", overrides))
        for name, value in values:
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a parsed spec is not changed in place (use replaced()): {name}")

    def __reduce__(self):  # copy and pickle through __init__: attributes are never set
        return ParsedSpec, (self.spec, self.text, self.source, self._lines, self.overrides)

    def replaced(self, spec: SweepSpec) -> ParsedSpec:
        """This file's text, lines and overrides with ``spec``, a changed copy of its spec."""
        return ParsedSpec(spec, self.text, self.source, self._lines, self.overrides)

    def error(self, path: tuple, message: str) -> SpecError:
        """The error at ``path``: named by the `--set` that gave the value there, else by the
        file's line."""
        return _error_at(path, message, self._lines, self.source, self.overrides)

    def resolved_text(self, changed_in_memory_by: str = "changes made in memory") -> str:
        """The sweep file as it runs: the user's text when nothing changed it, else the whole spec
        as YAML under a header that says what changed it (each `--set`, and
        ``changed_in_memory_by`` for a spec changed after parsing), so a saved copy runs the same
        sweep again."""
        overrides = [str(o) for o in self.overrides]
        as_given = parse_spec(self.text, overrides=overrides).spec
        if not overrides and as_given == self.spec:
            return self.text
        how = [f"--set {shlex.quote(o)}" for o in overrides] + ([changed_in_memory_by] if as_given != self.spec else [])
        header = f"# {self.source or 'sweep'} as run with {' '.join(how)}\n"
        return header + yaml.safe_dump(self.spec.model_dump(mode="json"), sort_keys=False)

    def written(self, path: tuple) -> bool:
        """Whether the file or a ``--set`` sets ``path`` (not a default, nor a change made in memory)."""
        return path in self._lines.lines or any(o.covers(path) for o in self.overrides)


def _error_at(
    path: tuple, message: str, lines: _LineMap, source: str | None, overrides: tuple[Override, ...]
) -> SpecError:
    given = next((o for o in reversed(overrides) if o.covers(path)), None)  # the last one set it
    if given is not None:
        return SpecError(f"--set {given.key}", message)
    return SpecError(".".join(map(str, path)), message, lines.line(path), source)


def _check_sections(parsed: ParsedSpec) -> None:
    spec = parsed.spec
    for section in RunConfig.SECTIONS:
        for key, value in getattr(spec, section).items():
            flat = f"{section}.{key}"
            if flat not in FIELD_TYPES or flat in DERIVED_KEYS:
                valid = [
                    k.split(".", 1)[1] for k in FIELD_TYPES if k.startswith(section + ".") and k not in DERIVED_KEYS
                ]
                raise parsed.error((section, key), unknown_key(key, valid))
            try:
                getattr(spec, section)[key] = check_value(flat, value)
            except ValueError as err:
                raise parsed.error((section, key), str(err)) from None
    search = spec.search
    for key, dim in search.space.items():
        path = ("search", "space", key)
        if key not in FIELD_TYPES:
            raise parsed.error(path, unknown_key(key, FIELD_TYPES))
        if key == "model.n" and (
            {"model.depth", "model.stages"} & set(search.space) or {"depth", "stages"} & set(spec.model)
        ):
            raise parsed.error(path, "model.n sets the depth: do not also give model.depth or model.stages")
        _check_dimension(parsed, path, key, dim, search.algorithm)
        if key.split(".", 1)[1] in getattr(spec, key.split(".", 1)[0]):
            raise parsed.error(path, f"{key} is both fixed in '{key.split('.')[0]}:' and searched; keep one")
    if search.seeds is not None:
        if search.algorithm == "optuna":
            raise parsed.error(
                ("search", "seeds"), "Optuna runs each draw once; search train.seed or use grid/random for seeds"
            )
        if "train.seed" in search.space or "seed" in spec.train:
            raise parsed.error(("search", "seeds"), "give seeds here or train.seed, not both")
        if not search.seeds or len(set(search.seeds)) != len(search.seeds):
            raise parsed.error(("search", "seeds"), f"{search.seeds} must be a non-empty list of distinct integers")
    if search.algorithm == "grid" and search.num_samples != 1:
        raise parsed.error(("search", "num_samples"), "a grid runs every point once; use search.seeds for repeats")
    if search.algorithm == "optuna" and search.exclude:
        raise parsed.error(("search", "exclude"), "exclude rules work with grid and random, not optuna")
    if search.algorithm == "optuna" and spec.resources.array > 1:
        raise parsed.error(
            ("resources", "array"),
            "arrays group planned trials; Optuna draws one trial at a time, so "
            "there is nothing to group: use search.algorithm grid or random, "
            "or leave resources.array out",
        )
    if spec.resources.workers > 1 and 0 < spec.resources.gpu < 1:
        raise parsed.error(
            ("resources", "gpu"),
            f"{spec.resources.gpu:g}: data-parallel workers take a whole GPU each "
            f"(NCCL runs one process per GPU); use 1 with resources.workers",
        )
    workers, batch = spec.resources.workers, spec.train.get("batch_size")
    if workers > 1 and spec.train.get("sync_bn") is False and isinstance(batch, int) and batch < 2 * workers:
        raise parsed.error(
            ("train", "batch_size"),
            f"{batch} split over {workers} workers leaves some fewer than 2 "
            f"images, and with sync_bn: false each worker's batch norm needs 2; "
            f"use at least {2 * workers}, or sync_bn: true",
        )
    if spec.resources.workers > 1 and spec.resources.array > 1:
        raise parsed.error(
            ("resources", "workers"),
            "an array trains its members on one device; use resources.array or resources.workers, not both",
        )
    if search.algorithm == "optuna" and not search.space:
        raise parsed.error(
            ("search", "space") if "space" in search.model_fields_set else ("search", "algorithm"),
            "Optuna has nothing to search (search.space is empty): every trial would be the same; "
            "add keys to search.space, or use algorithm: grid for one configuration",
        )
    _check_trial_count(parsed)
    for i, rule in enumerate(search.exclude):
        for key, value in rule.items():
            if key not in FIELD_TYPES:
                raise parsed.error(("search", "exclude", i, key), unknown_key(key, FIELD_TYPES))
            try:
                rule[key] = check_value(key, value)
            except ValueError as err:
                raise parsed.error(("search", "exclude", i, key), str(err)) from None


def _check_trial_count(parsed: ParsedSpec) -> None:
    """Refuse a sweep of more trials than can be planned, before a single one is enumerated."""
    search = parsed.spec.search
    if search.algorithm == "grid":
        sizes = [len(dim["choice"] if isinstance(dim, dict) else dim) for dim in search.space.values()]
        path, factors = ("search", "space"), [" × ".join(map(str, sizes)) + " values"] if len(sizes) > 1 else []
    else:
        sizes, path, factors = [search.num_samples], ("search", "num_samples"), []
    if search.seeds:
        sizes.append(len(search.seeds))
        factors.append(f"{len(search.seeds)} seeds")
    total = math.prod(sizes)
    if total > MAX_TRIALS:
        why = f" ({', × '.join(factors)})" if factors else ""
        raise parsed.error(path, f"{total:,} trials{why} are over the limit of {MAX_TRIALS:,} per sweep")


def _check_dimension(parsed: ParsedSpec, path: tuple, key: str, dim: Any, algorithm: str) -> None:
    """Validate one search dimension in place: list values are converted to the field's type."""
    if isinstance(dim, list):
        if not dim:
            raise parsed.error(path, "an empty list of values")
        for i, v in enumerate(dim):
            try:
                dim[i] = check_value(key, v)
            except ValueError as err:
                raise parsed.error(path + (i,), str(err)) from None
        return
    if not isinstance(dim, dict) or len(dim) != 1 or next(iter(dim)) not in DISTRIBUTIONS:
        raise parsed.error(
            path, f"{dim!r} is not a list of values or one of {{{', '.join(d + ': …' for d in DISTRIBUTIONS)}}}"
        )
    kind, arg = next(iter(dim.items()))
    if algorithm == "grid" and kind != "choice":
        raise parsed.error(path, f"a grid needs a list of values; '{kind}' needs search.algorithm random or optuna")
    if kind == "choice":
        if not isinstance(arg, list):
            raise parsed.error(path + (kind,), f"{arg!r}: choice takes a list of values")
        _check_dimension(parsed, path + (kind,), key, arg, algorithm)
        return
    number = _numeric_kind(key)
    if number is None or (kind != "int" and number is not float):
        wanted = "a list of values or {choice: […]}" if number is None else "{int: [low, high]} or a list"
        raise parsed.error(path + (kind,), f"{key} is not a real number: use {wanted}")
    if not (
        isinstance(arg, list)
        and len(arg) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
    ):
        raise parsed.error(path + (kind,), f"{arg!r} must be two numbers [low, high]")
    if not arg[0] < arg[1]:
        raise parsed.error(path + (kind,), f"{arg!r} must be [low, high] with low < high")
    if kind == "loguniform" and arg[0] <= 0:
        raise parsed.error(path + (kind,), f"{arg!r}: loguniform bounds must be positive")
    if kind == "int" and not all(float(v).is_integer() for v in arg):
        raise parsed.error(path + (kind,), f"{arg!r}: int bounds must be whole numbers")
    for v in arg:
        try:
            check_value(key, int(v) if kind == "int" else v)
        except ValueError as err:
            raise parsed.error(path + (kind,), str(err)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a sweep file with one is a mistake."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads `1e-3` and `5E-4` as strings: a float needs a dot there. Users write
# them as numbers (YAML 1.2 does too), so these are floats here.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _expanded_size(root: yaml.Node, source: str | None) -> int:
    """Values (scalars, lists, mappings) the document stands for once its aliases are expanded,
    as the line map and pydantic walk it. Each node is counted once (memoised by identity), so
    this is linear in the file even when the expansion is exponential (an alias bomb)."""
    sizes: dict[int, int | None] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            if sizes[id(node)] is None:
                raise SpecError(
                    "",
                    "a YAML alias refers to a list or mapping that contains it (a recursive structure)",
                    node.start_mark.line + 1,
                    source,
                )
            return sizes[id(node)]
        sizes[id(node)] = None  # in progress: meeting it again below is a cycle
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        sizes[id(node)] = total = 1 + sum(map(size, children))
        return total

    return size(root)


def _load_yaml(text: str, source: str | None) -> tuple[Any, _LineMap]:
    """The document and its line map, from one composition, refused before it is expanded when
    it would be too big or too deep."""
    loader = _UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None and _expanded_size(root, source) > MAX_VALUES:
            raise SpecError(
                "",
                f"the file expands to more than {MAX_VALUES:,} values (YAML aliases that repeat other "
                "aliases?); a sweep needs far fewer",
                None,
                source,
            )
        data = None if root is None else loader.construct_document(root)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        kind = "YAML error" if isinstance(err, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise SpecError("", f"{kind}: {problem}", mark.line + 1 if mark else None, source) from None
    except RecursionError:
        raise SpecError(
            "", "lists or mappings nested too deeply (hundreds of levels); a sweep needs a few", None, source
        ) from None
    finally:
        loader.dispose()
    return data, _LineMap(root)


def parse_spec(text: str, source: str | None = None, overrides: tuple[str, ...] | list[str] = ()) -> ParsedSpec:
    """The sweep file ``text`` with ``overrides`` (``KEY=VALUE``, as `--set` gives them) applied,
    validated as one file."""
    data, lines = _load_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError("", "a sweep file must be a YAML mapping (name:, model:, search:, …)", 1, source)
    changes: tuple[Override, ...] = ()
    try:
        changes = tuple(parse_override(given, _UniqueKeyLoader) for given in overrides)
        data = apply_overrides(data, changes)
    except OverrideError as err:
        raise SpecError(f"--set {err.key}", str(err)) from None
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(first["loc"])
        if first["type"] == "extra_forbidden":
            parent = SweepSpec
            for part in loc[:-1]:
                parent = parent.model_fields[part].annotation
            message = unknown_key(loc[-1], parent.model_fields)
        elif first["type"] == "missing":
            message = "required"
        else:
            shown = first.get("input")
            message = f"{shown!r}: {first['msg']}" if not isinstance(shown, dict) else first["msg"]
        raise _error_at(loc, message, lines, source, changes) from None
    parsed = ParsedSpec(spec, text, source, lines, changes)
    _check_sections(parsed)
    return parsed


def load_spec(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> ParsedSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError("", f"no sweep file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpecError(
                "", f"{path} is {path.stat().st_size:,} bytes, over the limit of {MAX_FILE_BYTES:,} for a sweep file"
            )
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError("", f"cannot read {path}: {err}") from None
    return parse_spec(text, source=str(path), overrides=overrides)
