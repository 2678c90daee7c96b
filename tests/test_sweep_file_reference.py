"""docs/sweep-file.md: the committed page is what the models give, it names every key a sweep file
accepts (walked here apart from the generator), a key added to a model makes it stale, and the
bounds written next to the settings are the ones their validation enforces."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass

import pytest
from pydantic import BaseModel, Field

from orchestrator.sweepfile import reference
from orchestrator.sweepfile.reference import COMMAND, REFERENCE_PATH, main, sweep_file_reference
from orchestrator.sweepfile.spec import FIELD_TYPES, SchedulerSpec, SweepSpec
from resnet_core.config import DataConfig, RunConfig, TrainConfig, setting
from resnet_core.errors import ConfigError

pytestmark = pytest.mark.unit


def _committed() -> str:
    return REFERENCE_PATH.read_text()


def test_the_committed_page_is_the_generated_one():
    assert _committed() == sweep_file_reference(), f"docs/sweep-file.md is stale: regenerate it with {COMMAND}"


def _accepted_keys() -> set[str]:
    """Every dotted key of a sweep file, from the models themselves: the pydantic sections, the
    settings' dataclasses, and what search.space takes (the spec's own table, with model.n)."""
    keys = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, f"{prefix}{name}.")
            elif not (prefix == "" and name in RunConfig.SECTIONS):
                keys.add(prefix + name)

    walk(SweepSpec, "")
    for section, kind in RunConfig.SECTIONS.items():
        keys |= {f"{section}.{f.name}" for f in dataclasses.fields(kind)}
    return keys | set(FIELD_TYPES)


def test_the_page_names_every_key_a_sweep_file_accepts():
    keys = _accepted_keys()
    # the keys the issue found missing from every page, and a space-only key
    assert {"search.num_samples", "search.seed", "model.n", "train.epochs", "resources.gpu"} <= keys
    page = _committed()
    missing = sorted(key for key in keys if f"`{key}`" not in page)
    assert not missing, f"docs/sweep-file.md lacks {missing}: regenerate it with {COMMAND}"


class _GrownScheduler(SchedulerSpec):
    patience: int = Field(3, ge=1, description="rungs a trial may stay below the cut")


class _GrownSpec(SweepSpec):
    scheduler: _GrownScheduler = Field(default_factory=_GrownScheduler)


@dataclass(frozen=True)
class _GrownTrain(TrainConfig):
    clip_grad: float = setting(0.0, "gradient norm clipping (0: none)", "≥ 0")


@pytest.mark.parametrize(
    ("spec", "sections", "key", "row"),
    [
        (_GrownSpec, RunConfig.SECTIONS, "scheduler.patience", "| int | `3` | ≥ 1 | rungs a trial"),
        (SweepSpec, {**RunConfig.SECTIONS, "train": _GrownTrain}, "train.clip_grad", "| float | `0.0` | ≥ 0 |"),
    ],
)
def test_a_key_added_to_a_model_makes_the_page_stale(tmp_path, capsys, spec, sections, key, row):
    grown = sweep_file_reference(spec, sections)
    assert f"`{key}` {row}" in grown
    assert f"`{key}`" not in _committed()
    page = tmp_path / "sweep-file.md"
    page.write_text(grown)
    assert main(["--check", "--out", str(page)]) == 1
    assert f"{page} is stale: regenerate it with {COMMAND}" in capsys.readouterr().err


def test_the_command_writes_the_page_and_then_finds_it_current(tmp_path, capsys):
    page = tmp_path / "docs" / "sweep-file.md"
    assert main(["--check", "--out", str(page)]) == 1  # none yet
    assert main(["--out", str(page)]) == 0
    assert page.read_text() == _committed()
    assert main(["--check", "--out", str(page)]) == 0
    assert f"{page} is current" in capsys.readouterr().out


def test_a_key_without_a_meaning_stops_the_page():
    class Unexplained(SweepSpec):
        retries: int = 0

    with pytest.raises(ValueError, match="retries has no meaning to show"):
        sweep_file_reference(Unexplained)


def test_a_section_without_an_example_stops_the_page(monkeypatch):
    monkeypatch.delitem(reference.EXAMPLES, "budget")
    with pytest.raises(KeyError, match="no example for the section 'budget'"):
        sweep_file_reference()


# Bounds written as prose: conditions on other settings or on a list's items.
PROSE_BOUNDS = {"model.depth", "model.stages", "dataset.scale_range", "train.milestones", "train.device"}
SIMPLE_BOUND = re.compile(
    r"(?P<op>[≥>]) (?P<low>-?[\d.]+)|(?P<left>[\[(])(?P<lo>-?[\d.]+), (?P<hi>-?[\d.]+)(?P<right>[\])])"
)


def _base(kind: type, doc: str) -> dict:
    """Settings that make every other field of ``kind`` valid, so only the probed one can fail."""
    if kind is DataConfig:
        folder = doc.startswith("imagenet/imagefolder")
        return {"name": "imagefolder", "root": "/data"} if folder else {"name": "synthetic", "val_size": 1}
    return {}


def test_the_documented_bounds_of_the_settings_are_the_validations():
    """Each bound written next to a setting: the values just outside it are refused, the values
    at (or just inside) its ends are accepted."""
    checked = set()
    for section, kind in RunConfig.SECTIONS.items():
        hints = typing.get_type_hints(kind)
        for f in dataclasses.fields(kind):
            bound, key = f.metadata["values"], f"{section}.{f.name}"
            if not isinstance(bound, str):
                continue
            match = SIMPLE_BOUND.fullmatch(bound)
            if match is None:
                assert key in PROSE_BOUNDS, f"{key}: bound {bound!r} is neither simple nor known prose"
                continue
            number = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t in (int, float))
            step = 1 if number is int else 0.01
            if match["op"]:
                ends = [(number(match["low"]), match["op"] == "≥", -step)]
            else:
                ends = [
                    (number(match["lo"]), match["left"] == "[", -step),
                    (number(match["hi"]), match["right"] == "]", step),
                ]
            for end, inclusive, outward in ends:
                outside, inside = (end + outward, end) if inclusive else (end, end - outward)
                base = _base(kind, f.metadata["doc"])
                with pytest.raises(ConfigError):
                    kind(**{**base, f.name: outside})
                kind(**{**base, f.name: inside})
            checked.add(key)
    assert len(checked) >= 20 and {"train.lr", "model.drop_path", "dataset.lighting"} <= checked
