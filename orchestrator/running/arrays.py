"""Trial arrays in the sweep (resources.array): K planned trials of one shape run as one Tune
trial that trains them as one fused model (resnet_core.array), and each member is still a trial
to the user.

Tune sees one trial per array: its config holds the members' flat configs (ARRAY, JSON text),
its results each member's own result (MEMBERS) and, as its own metrics, those of its best
member, so ASHA and the searcher judge (and ASHA stops) whole arrays by their best member. The
driver's callbacks that expect one Tune trial per trial — MLflow tracking and the progress
lines — get the members instead (``ArrayMembers``): each a ``MemberView`` with its own id,
config and last result. The final table reads the members' results the same way
(``member_results``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd
from ray.tune import Callback

from orchestrator.vocabulary import ARRAY, MEMBERS, STATUS
from resnet_core import metrics as M
from resnet_core.metrics import Status

__all__ = [
    "ArrayDirName",
    "ArrayMembers",
    "MemberView",
    "array_config",
    "member_records",
    "member_results",
    "members_of",
    "trained_epochs",
]

_DONE = "done"  # Tune's flag on a trial's last result


def array_config(configs: list[dict[str, Any]]) -> dict[str, str]:
    """An array trial's config (JSON text: a value that Tune's points_to_evaluate and its
    experiment state keep as it is)."""
    return {ARRAY: json.dumps(configs)}


def members_of(config: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The members' flat configs of an array trial's config; None for a single trial's."""
    text = (config or {}).get(ARRAY)
    return json.loads(text) if isinstance(text, str) else None


def member_records(result: dict[str, Any] | None) -> dict[int, dict]:
    """Member → its own result, in an array trial's result ({} in a single trial's)."""
    text = (result or {}).get(MEMBERS)
    return {int(k): r for k, r in json.loads(text).items()} if isinstance(text, str) else {}


def trained_epochs(result: dict[str, Any]) -> list[tuple[int | None, int]]:
    """(member, epoch) for each epoch a result reports: one per member in an array trial's
    result, (None, epoch) in a single trial's."""
    records = member_records(result) or {None: result}
    return [(k, int(r[M.EPOCH])) for k, r in records.items() if M.EPOCH in r]


def _diverged(record: dict) -> bool:
    return record.get(STATUS) == str(Status.DIVERGED)


class ArrayDirName:
    """Tune's name (and folder) for an array trial: its size, its first member's name, Tune's id."""

    def __init__(self, namer) -> None:
        self.namer = namer

    def __call__(self, trial) -> str:
        configs = members_of(trial.config)
        return f"array{len(configs)}-{self.namer(configs[0])}_{trial.trial_id}"


class MemberView:
    """Member k of an array trial, as a callback sees a Tune trial: its own id (stable across
    resumes: MLflow finds its run by it), config and last result; the rest — status while it
    trains, folders, error, failures — is its array's."""

    def __init__(self, trial, k: int, config: dict[str, Any]) -> None:
        self.array, self.member, self.config = trial, k, config
        self.trial_id = f"{trial.trial_id}-{k}"
        self.record: dict = {}  # its last result
        self.ended = False  # its end was told to the callbacks
        self.ended_first = False  # it ended before its array (diverged)

    @property
    def status(self) -> str:
        return "TERMINATED" if self.ended_first else self.array.status

    @property
    def last_result(self) -> dict:
        if not self.record:
            return {}
        return {**self.record, _DONE: self.ended_first or bool((self.array.last_result or {}).get(_DONE))}

    def __getattr__(self, name: str):
        return getattr(self.array, name)


class ArrayMembers(Callback):
    """Passes Tune's events to ``callbacks`` with each array trial replaced by its members: a
    member starts with its array, gets its own results, ends when it diverges (the others go
    on) or else with its array (completed, stopped by ASHA, failed, interrupted)."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks
        self.ended_first: set[str] = set()  # members that ended before their array (kept with the experiment)
        self._views: dict[str, list[MemberView]] = {}

    def __getstate__(self):
        return {**self.__dict__, "_views": {}}  # views hold live Trial objects: made again when needed

    def get_state(self) -> dict:
        return {"callbacks": [c.get_state() for c in self.callbacks], "ended_first": sorted(self.ended_first)}

    def set_state(self, state: dict) -> None:
        for callback, saved in zip(self.callbacks, state.get("callbacks", [])):
            if saved:
                callback.set_state(saved)
        self.ended_first = set(state.get("ended_first", []))

    # --- arrays as members ------------------------------------------------------------------
    def _array(self, trial) -> list[MemberView]:
        """An array trial's members; [] for a trial that is not an array."""
        configs = members_of(trial.config)
        if configs is None:
            return []
        views = self._views.get(trial.trial_id)
        if views is None or views[0].array is not trial:  # a restored sweep has new Trial objects
            views = self._views[trial.trial_id] = [MemberView(trial, k, c) for k, c in enumerate(configs)]
            for view in views:
                view.ended = view.ended_first = view.trial_id in self.ended_first
        return views

    def members(self, trial) -> list:
        """The array trial's members (views), or [trial] for a trial that is not an array."""
        return self._array(trial) or [trial]

    def expand(self, trials: list) -> list:
        return [view for trial in trials for view in self.members(trial)]

    def unfinished(self, trials: list) -> list:
        """The members of ``trials`` whose end was not told."""
        return [view for view in self.expand(trials) if not getattr(view, "ended", False)]

    def _each(self, hook: str, trials: list, trial, **info) -> None:
        """Calls ``hook`` of every callback for each member of ``trial`` that has not ended."""
        members = self.unfinished([trial])
        if not members:
            return
        everyone = self.expand(trials)
        for view in members:
            for callback in self.callbacks:
                getattr(callback, hook)(trials=everyone, trial=view, **info)

    def _end(self, hook: str, trials: list, trial, **info) -> None:
        self._each(hook, trials, trial, **info)
        for view in self._array(trial):
            view.ended = True

    # --- Tune's events ----------------------------------------------------------------------
    def setup(self, **info) -> None:
        for callback in self.callbacks:
            callback.setup(**info)

    def _everyone(self, hook: str, trials: list, **info) -> None:
        everyone = self.expand(trials)
        for callback in self.callbacks:
            getattr(callback, hook)(trials=everyone, **info)

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._everyone("on_step_begin", trials, iteration=iteration, **info)

    def on_step_end(self, iteration, trials, **info) -> None:
        self._everyone("on_step_end", trials, iteration=iteration, **info)

    def on_experiment_end(self, trials, **info) -> None:
        self._everyone("on_experiment_end", trials, **info)

    def _start(self, hook: str, iteration, trials, trial, **info) -> None:
        # (Re)started: every member that had not ended before its array goes on (again).
        for view in self._array(trial):
            view.ended = view.ended_first
        self._each(hook, trials, trial, iteration=iteration, **info)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._start("on_trial_start", iteration, trials, trial, **info)

    def on_trial_restore(self, iteration, trials, trial, **info) -> None:
        self._start("on_trial_restore", iteration, trials, trial, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        records, views = member_records(result), self._array(trial)
        if not views:
            self._each("on_trial_result", trials, trial, iteration=iteration, result=result, **info)
            return
        everyone = self.expand(trials)
        for view in views:
            record = records.get(view.member)
            if record is None or view.ended:
                continue
            view.record = record
            for callback in self.callbacks:
                callback.on_trial_result(iteration=iteration, trials=everyone, trial=view, result=record, **info)
            if _diverged(record):  # frozen in the array: this member is over, the others go on
                view.ended = view.ended_first = True
                self.ended_first.add(view.trial_id)
                for callback in self.callbacks:
                    callback.on_trial_complete(iteration=iteration, trials=everyone, trial=view, **info)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end("on_trial_complete", trials, trial, iteration=iteration, **info)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end("on_trial_error", trials, trial, iteration=iteration, **info)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._each("on_trial_recover", trials, trial, iteration=iteration, **info)

    def on_trial_save(self, iteration, trials, trial, **info) -> None:
        self._each("on_trial_save", trials, trial, iteration=iteration, **info)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        self._each("on_checkpoint", trials, trial, iteration=iteration, checkpoint=checkpoint, **info)


@dataclass
class MemberResult:
    """Member k of an array trial's Tune Result, with what the final table reads of a Result."""

    config: dict
    metrics: dict
    metrics_dataframe: pd.DataFrame
    error: Any
    path: str | None


def member_results(results) -> list:
    """A ResultGrid's results with each array trial's Result replaced by one per member."""
    out = []
    for result in results:
        configs = members_of(result.config)
        if configs is None:
            out.append(result)
            continue
        df = result.metrics_dataframe
        histories: list[list[dict]] = [[] for _ in configs]
        for row in df.to_dict("records") if df is not None and MEMBERS in df else []:
            for k, record in member_records(row).items():
                histories[k].append(record)
        done = bool((result.metrics or {}).get(_DONE))
        for config, history in zip(configs, histories):
            # A member that never reported still has its own name (its config is whole): epoch 0.
            last = {**history[-1], _DONE: done or _diverged(history[-1])} if history else {M.EPOCH: 0, _DONE: done}
            out.append(MemberResult(config, last, pd.DataFrame(history), result.error, result.path))
    return out
