"""docs/sweep-file.md, the reference of every key a sweep file accepts, written from the models
that validate the file (spec.py's sections, resnet_core.config's settings): a key's type, default
and bounds come from its field, its meaning from the field's description (pydantic) or
``metadata["doc"]`` (the settings' ``config.setting``), so the page cannot drift from the code.

``python -m orchestrator.sweepfile.reference`` rewrites the page; ``--check`` says whether it is
current (exit 1 when stale)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from orchestrator.sweepfile.spec import DERIVED_KEYS, DISTRIBUTIONS, SweepSpec, parse_spec
from resnet_core.config import RunConfig

__all__ = ["REFERENCE_PATH", "main", "sweep_file_reference"]

# The source checkout's copy; the page belongs to the repository, not to an installed package.
REFERENCE_PATH = Path(__file__).resolve().parents[2] / "docs" / "sweep-file.md"
COMMAND = "python -m orchestrator.sweepfile.reference"

# The spec holds only the types of its derived keys and the names of its distributions; what
# they mean is said here, and a new one without a line here stops the page from being written.
DERIVED_MEANINGS = {
    "model.n": "blocks per stage of a CIFAR net: sets `model.depth` to 6n+2 (basic) or 9n+2 (bottleneck); "
    "not with `model.depth` or `model.stages`",
}
DISTRIBUTION_FORMS = {
    "uniform": ("{uniform: [low, high]}", "random, optuna", "a real number drawn evenly from [low, high]"),
    "loguniform": ("{loguniform: [low, high]}", "random, optuna", "a real number drawn evenly on a log scale; low > 0"),
    "int": ("{int: [low, high]}", "random, optuna", "a whole number from low to high, both included"),
    "choice": ("{choice: [a, b, …]}", "grid, random, optuna", "the same as the list [a, b, …]"),
}

# One short example per section, each checked by the sweep file's own parser when the page is
# written; "" is the top level.
EXAMPLES = {
    "": """\
name: cifar10-depth
description: He et al. 2015, Table 6 / Fig. 6
max_concurrent: 8
storage_path: s3://bucket/ray   # on a cluster: shared by every node (S3, NFS)
""",
    "dataset": """\
dataset:
  name: digits
  image_size: 16      # 16/8/4 px stages: 4× cheaper than 32 px, same nets
""",
    "model": """\
model: {arch: cifar, block: basic, shortcut: A}
""",
    "train": """\
train:
  iterations: 64000
  batch_size: 128
  weight_decay: 1e-4          # a number, as YAML 1.2 reads it
  milestones: [0.5, 0.75]     # lr ÷10 at 32k and 48k iterations
  warmup_iterations: 400      # ResNet-110: 0.01 for 400 steps, then 0.1
""",
    "metric": """\
metric: {name: val_error, mode: min}
""",
    "search": """\
search:
  algorithm: grid
  space:
    model.n: [3, 5, 7, 9, 18]     # depth 20, 32, 44, 56, 110
    model.residual: [true, false]
  seeds: [0, 1]                   # every point once per seed
  exclude:
    - {model.residual: false, model.n: 18}
""",
    "search.space": """\
search:
  algorithm: random
  num_samples: 20                 # trials drawn (a grid keeps 1)
  seed: 0                         # the draws; another seed draws other points
  space:
    train.lr: {loguniform: [1e-2, 0.5]}
    train.weight_decay: {choice: [1e-4, 5e-4]}
    model.depth: [20, 56]
""",
    "scheduler": """\
scheduler: {name: asha, grace_period: 20, reduction_factor: 3}
""",
    "resources": """\
resources: {cpu: 4, gpu: 0.5}     # two trials share a GPU
""",
    "tracking": """\
tracking: {experiment: cifar10-depth, tracking_uri: http://mlflow:5000}
""",
    "failure": """\
failure: {max_failures: 2}
""",
    "budget": """\
budget: {max_trials: 40, max_epochs: 5000}
""",
}

INTRO = f"""\
# The sweep file

<!-- Written by `{COMMAND}` from orchestrator/sweepfile/spec.py and
resnet_core/config.py: change the models there and run it again; do not edit this page. -->

A sweep file is one YAML mapping: the data, the fixed model and recipe, what to search, and how to
run it ([Sweeps](../README.md#sweeps) shows a whole one). Every section is optional except `name`.
The file is checked whole before anything starts: an unknown key (with suggestions), a wrong type
or a value out of bounds is one line naming its path and line, exit code 2. Numbers may be
written `1e-3` or `5E-4`: they are read as numbers (as YAML 1.2 does; plain YAML 1.1 would read
strings). Where a default is `null`, the setting is worked out from the others, as its line says.

Every key below can also be given on the command line as `--set KEY=VALUE`, e.g.
`--set train.epochs=2` or `--set search.space.model.depth=[20,56]`; VALUE is read as YAML with the
same number rules.
"""


def _doc(obj: Any) -> str:
    """A class's docstring as Markdown: cleaned, ``code`` as `code`."""
    return inspect.cleandoc(obj.__doc__ or "").replace("``", "`")


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if value == "":
        return '""'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_yaml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _code(value: Any) -> str:
    return f"`{_yaml_value(value)}`"


def _type_text(hint: Any) -> str:
    """A type as a YAML user reads it: `int or null`, `list of float`, `[int, int]`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_text(a) for a in args if a is not type(None)]
        parts = list(dict.fromkeys(parts)) + (["null"] if type(None) in args else [])
        return " or ".join(parts)
    if origin is Literal:
        return " or ".join(dict.fromkeys("string" if isinstance(a, str) else type(a).__name__ for a in args))
    if origin in (list, tuple) and (origin is list or args[-1:] == (Ellipsis,)):
        return f"list of {_type_text(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(map(_type_text, args)) + "]"
    if origin is dict or hint is dict:
        return "mapping"
    return {str: "string", type(None): "null", Any: "any"}.get(hint, getattr(hint, "__name__", str(hint)))


def _literals(hint: Any) -> tuple:
    """The values a Literal (alone or in a union with bool) allows, bool's included."""
    parts = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    values = tuple(v for p in parts if typing.get_origin(p) is Literal for v in typing.get_args(p))
    return ((True, False) if values and bool in parts else ()) + values


def _bounds(constraints: list) -> str:
    """pydantic's ge/gt/le/lt constraints as `≥ 1`, `> 0`."""
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return ", ".join(
        f"{sign} {_yaml_value(getattr(c, attr))}"
        for c in constraints
        for attr, sign in signs.items()
        if getattr(c, attr, None) is not None
    )


def _allowed(hint: Any, values: tuple | str | None) -> str:
    choices = values if isinstance(values, tuple) else _literals(hint)
    if choices:
        return ", ".join(map(_code, choices))
    return values or ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(
    rows: list[tuple[str, ...]], header: tuple[str, ...] = ("key", "type", "default", "allowed", "meaning")
) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _meaning(key: str, text: str | None) -> str:
    """A key's line; a key without one stops the page from being written."""
    if not text:
        raise ValueError(
            f"{key} has no meaning to show: give it Field(description=...) (spec.py) or "
            "setting(default, doc) (resnet_core.config)"
        )
    return text


def _pydantic_row(key: str, info) -> tuple[str, str, str, str, str]:
    if info.is_required():
        default = "required"
    else:
        default = _code(info.default_factory() if info.default_factory else info.default)
    allowed = _allowed(info.annotation, None) or _bounds(info.metadata)
    return f"`{key}`", _type_text(info.annotation), default, allowed, _meaning(key, info.description)


def _setting_rows(section: str, kind: type) -> list[tuple[str, str, str, str, str]]:
    hints = typing.get_type_hints(kind)
    rows = []
    for f in dataclasses.fields(kind):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        allowed = _allowed(hints[f.name], f.metadata.get("values"))
        key = f"{section}.{f.name}"
        rows.append(
            (f"`{key}`", _type_text(hints[f.name]), _code(default), allowed, _meaning(key, f.metadata.get("doc")))
        )
    return rows


def _example(key: str) -> str:
    """The section's example, checked as a sweep file (a section alone gets a name)."""
    if key not in EXAMPLES:
        raise KeyError(f"no example for the section {key or 'top level'!r}: add one to EXAMPLES in {__name__}")
    text = EXAMPLES[key]
    parse_spec(text if key == "" else "name: example\n" + text, source=f"{__name__}.EXAMPLES[{key!r}]")
    return f"```yaml\n{text}```"


def _space_part(sections: Mapping[str, type]) -> str:
    """What `search.space` takes: its keys (every setting, dotted, and the derived ones) and the
    forms of a dimension."""
    settings = ", ".join(f"`{name}`" for name in sections)
    derived = [(f"`{key}`", _type_text(kind), DERIVED_MEANINGS[key]) for key, kind in DERIVED_KEYS.items()]
    forms = [("`[a, b, …]`", "grid, random, optuna", "grid: each value is a point; random, optuna: one is drawn")]
    forms += [
        (f"`{form}`", algorithms, meaning) for form, algorithms, meaning in map(DISTRIBUTION_FORMS.get, DISTRIBUTIONS)
    ]
    return "\n\n".join(
        [
            "### `search.space`",
            f"A key of `search.space` is a setting's dotted key: any key of the {settings} tables above "
            "(`model.depth`, `train.lr`), whose values it takes and checks, or one of these:",
            _table(derived, ("key", "type", "meaning")),
            "A key searched is not also fixed in its section. Its value is a list, or one distribution:",
            _table(forms, ("value", "algorithms", "meaning")),
            "`--set search.space.KEY=VALUE` sets one dimension (the key itself has dots: "
            "`--set search.space.model.n=[3,5]`).",
            _example("search.space"),
        ]
    )


def _model_parts(model: type[BaseModel], prefix: str, sections: Mapping[str, type]) -> list[str]:
    """The section ``model`` at ``prefix`` (a table of its own keys and an example), then the
    sections nested in it: the settings' dataclasses and the pydantic models."""
    rows, nested = [], []
    for name, info in model.model_fields.items():
        key = prefix + name
        if not prefix and name in sections:
            kind = sections[name]
            nested.append(f"## `{name}`\n\n{_doc(kind)}\n\n{_table(_setting_rows(name, kind))}\n\n{_example(name)}")
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            nested += _model_parts(info.annotation, key + ".", sections)
        else:
            rows.append(_pydantic_row(key, info))
    section = prefix.rstrip(".")
    heading = f"## `{section}`" if section else "## Top level"
    parts = [heading, _doc(model), _table(rows), _example(section)]
    if section == "search":
        parts.append(_space_part(sections))
    return ["\n\n".join(parts), *nested]


def sweep_file_reference(spec: type[BaseModel] = SweepSpec, sections: Mapping[str, type] = RunConfig.SECTIONS) -> str:
    """The Markdown of docs/sweep-file.md for the sweep file ``spec`` (its pydantic root model),
    whose keys named in ``sections`` take the fields of those dataclasses."""
    parts = _model_parts(spec, "", sections)
    contents = "Sections: " + ", ".join(
        f"[{p.splitlines()[0].removeprefix('## ')}](#{anchor(p.splitlines()[0])})" for p in parts
    )
    return "\n\n".join([INTRO.rstrip(), contents, *parts]) + "\n"


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.lstrip("#").strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def page_main(argv: list[str] | None, *, prog: str, description: str, path: Path, page: Callable[[], str]) -> int:
    """The command of a generated page (this one, docs/cli.md's): write ``page()`` to ``path``
    (or --out), or with --check exit 1 when the file there differs."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the page is stale")
    parser.add_argument("--out", type=Path, default=path, help=f"the page (default: {path})")
    args = parser.parse_args(argv)
    if args.out == path and not (path.parents[1] / "pyproject.toml").is_file():
        parser.error(f"{path.parents[1]} is not a source checkout: give --out PATH")
    text = page()
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is stale: regenerate it with {prog}", file=sys.stderr)
            return 1
        print(f"{args.out} is current")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return page_main(
        argv,
        prog=COMMAND,
        description="Write docs/sweep-file.md from the sweep file's models, or check it is current.",
        path=REFERENCE_PATH,
        page=sweep_file_reference,
    )


if __name__ == "__main__":
    sys.exit(main())
