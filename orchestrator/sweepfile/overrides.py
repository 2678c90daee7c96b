"""`--set KEY=VALUE`: a change to the sweep file given on the command line (as Hydra's
``key=value``), applied to the file's YAML before it is validated, so it is checked exactly as
if it were written in the file, and an error names the flag that gave it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["Override", "apply_overrides", "parse_override"]

# search.space's keys are flat config keys with dots of their own (`model.depth`): after this
# prefix the rest of KEY is one key.
SPACE = ("search", "space")


@dataclass(frozen=True)
class Override:
    """One ``--set KEY=VALUE``: ``path`` is where in the file it goes, ``value`` read as YAML."""

    key: str
    text: str  # VALUE as given
    path: tuple[str, ...]
    value: Any

    def __str__(self) -> str:
        return f"{self.key}={self.text}"

    def covers(self, path: tuple) -> bool:
        """Whether an error at ``path`` (a YAML path) is about this override's value."""
        return tuple(map(str, path[: len(self.path)])) == self.path


class OverrideError(ValueError):
    """A ``--set`` that cannot be applied: ``key`` is what the user gave."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


def _path(key: str) -> tuple[str, ...]:
    parts = tuple(key.split("."))
    if parts[:2] == SPACE and len(parts) > 2:
        return (*SPACE, ".".join(parts[2:]))
    return parts


def parse_override(given: str, loader: type[yaml.SafeLoader]) -> Override:
    """``KEY=VALUE`` → Override; VALUE is YAML read by ``loader`` (the sweep file's own, so
    ``1e-3`` is a number here as there)."""
    key, sep, text = given.partition("=")
    key = key.strip()
    if not sep or not key:
        raise OverrideError(key or given, f"{given!r} is not KEY=VALUE (e.g. --set train.epochs=2)")
    if any(not part for part in key.split(".")):
        raise OverrideError(key, f"{key!r} is not a dotted path of the sweep file (e.g. train.epochs)")
    try:
        value = yaml.load(text, Loader=loader) if text.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise OverrideError(key, f"{text!r} is not a YAML value ({problem})") from None
    return Override(key, text, _path(key), value)


def apply_overrides(data: dict, overrides: tuple[Override, ...]) -> dict:
    """The file's mapping with each override set in turn (a later one wins); sections that the
    file leaves out are created. ``data`` itself is not changed."""
    data = copy.deepcopy(data)
    for override in overrides:
        node = data
        for depth, part in enumerate(override.path[:-1]):
            child = node.setdefault(part, {})
            if child is None:  # `train:` written with nothing under it
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(override.path[: depth + 1])
                raise OverrideError(override.key, f"{where} is {child!r} in the file, not a section with keys")
            node = child
        node[override.path[-1]] = override.value
    return data
