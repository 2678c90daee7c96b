"""A sweep that grows (`run FILE --extend`): which trials of the edited file are already done,
which are unfinished, which are new. A trial is its whole resolved configuration, so a changed
fixed setting (epochs, data set, batch size) makes every trial new."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.sweepfile.space import resolve_trial
from resnet_core.errors import ConfigError

__all__ = ["Growth", "plan_growth", "trial_identity"]


def trial_identity(config: dict[str, Any]) -> str:
    """A trial's configuration as one comparable text: its resolved flat config with each value
    as MLflow's params hold it (``str``), so a Tune config and a run's params compare equal."""
    try:
        resolved = resolve_trial(config, {})
    except (ConfigError, ValueError):  # an invalid Optuna draw: it is what was drawn
        resolved = dict(config)
    return identity_of_params({k: str(v) for k, v in resolved.items()})


def identity_of_params(params: dict[str, str]) -> str:
    """trial_identity of a run from its MLflow params."""
    return json.dumps(dict(sorted(params.items())))


@dataclass(frozen=True)
class EarlierTrial:
    """A trial the sweep ran before: its configuration and whether Tune finished it."""

    config: dict[str, Any]
    finished: bool  # completed, stopped early or diverged (Tune's TERMINATED)
    result: dict[str, Any] = field(default_factory=dict)  # its last result, as the searcher saw it


@dataclass
class Growth:
    """What growing a sweep to a new file means, before anything runs."""

    done: int  # finished trials the new file still has: kept, not trained again
    unfinished: int  # trials the new file still has, not finished: they continue from checkpoints
    new: list[dict[str, Any]]  # configurations to train (grid/random); empty for Optuna
    new_samples: int  # Optuna: draws to add; grid/random: len(new)
    removed: set[str]  # identities of earlier trials the new file no longer has
    unfinished_removed: int = 0  # of those, how many are unfinished (Tune continues them anyway)
    changed: list[tuple[str, Any, Any]] = field(default_factory=list)  # fixed settings: key, before, now

    def summary(self, name: str) -> str:
        """One line, printed before anything starts."""
        parts = [
            f"{self.done} done (kept, not trained again)",
            f"{self.unfinished} unfinished (continue from their checkpoints)",
            f"{self.new_samples} new",
        ]
        if self.removed:
            parts.append(f"{len(self.removed)} no longer in the file (kept in MLflow, left out of status and report)")
        return f"extending {name}: {', '.join(parts)}"

    def changed_line(self) -> str | None:
        """Which fixed settings changed, when they make every trial new."""
        if not self.changed:
            return None
        shown = ", ".join(f"{key} {before!r} → {now!r}" for key, before, now in self.changed[:4])
        more = f" and {len(self.changed) - 4} more" if len(self.changed) > 4 else ""
        return f"the file changes fixed settings ({shown}{more}): every trial of it is new"


def plan_growth(
    earlier: Iterable[EarlierTrial],
    planned: list[dict[str, Any]] | None,
    *,
    samples: int,
    before: dict[str, Any],
    now: dict[str, Any],
) -> Growth:
    """``earlier``: the sweep's trials so far; ``planned``: the new file's trial configs (None for
    Optuna, which draws ``samples`` in all); ``before``/``now``: the two files' fixed settings."""
    earlier = list(earlier)
    finished = {trial_identity(t.config) for t in earlier if t.finished}
    started = {trial_identity(t.config) for t in earlier} - finished
    changed = [
        (key, before.get(key), now.get(key))
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ]
    if planned is None:  # Optuna: draws count (two may be equal); new unless the space and settings are the same
        keep = not changed
        done = sum(t.finished for t in earlier) if keep else 0
        unfinished = len(earlier) - done if keep else 0
        return Growth(
            done=done,
            unfinished=unfinished,
            new=[],
            new_samples=max(0, samples - done - unfinished),
            removed=set() if keep else finished | started,
            unfinished_removed=0 if keep else len(started),
            changed=changed,
        )
    wanted = {trial_identity(c): c for c in planned}
    new = [c for key, c in wanted.items() if key not in finished and key not in started]
    overlap = (finished | started) & set(wanted)
    return Growth(
        done=len(finished & set(wanted)),
        unfinished=len(started & set(wanted)),
        new=new,
        new_samples=len(new),
        removed=(finished | started) - set(wanted),
        unfinished_removed=len(started - set(wanted)),
        changed=changed if not overlap else [],
    )
