"""`resnet-sweep export`: one trial's weights, out of its sweep's Tune folder, as the file that
``resnet_core.export.load_model`` loads in one call.

Which weights: those of the trial's best epoch (``resnet_core.metrics.best_epoch``: lowest val
error), whose test error is the one `run`, MLflow and the report give for the trial, when a
checkpoint of that epoch is kept; else its latest checkpoint's, and it says so. An array
member's are its own: an array's checkpoint holds every member's state, each in a single
trial's form (``ArrayTrainer.state_dict``), so its weights load into a single ResNet.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator.persistence import storage
from orchestrator.running import ray_compat
from orchestrator.running.arrays import member_records, members_of
from orchestrator.running.progress import TrialNamer
from orchestrator.running.replay import tune_trials
from orchestrator.running.stages import retired, stages, started
from orchestrator.running.sweep import SPEC_FILE, Prepared, SweepError, find_experiment, varying_keys
from orchestrator.running.trainable import CHECKPOINT_FILE, passed_over_reason
from orchestrator.sweepfile.growth import trial_identity
from orchestrator.sweepfile.plan import make_plan
from orchestrator.sweepfile.spec import SpecError, parse_spec
from orchestrator.vocabulary import EARLIER_EPOCHS, STATUS
from resnet_core import metrics as M
from resnet_core.metrics import Status

__all__ = ["NoEpochWeights", "Weights", "export_model", "exported_weights", "trial_weights"]

SHOWN_NAMES = 5  # valid names an error about a wrong one lists


@dataclass(frozen=True)
class _Trial:
    """A trial as the user names it: a Tune trial, or one member of an array trial."""

    name: str  # as `run`'s table and MLflow show it
    folder: str  # its Tune trial folder (an array's: its members')
    member: int | None  # its place in the array; None for a single trial
    retired: bool = False  # no longer in the sweep's file (`run --extend`): never the best


@dataclass(frozen=True)
class Weights:
    """A trial's weights in one checkpoint, with what they came with."""

    checkpoint: str  # the checkpoint folder's name
    epoch: int
    model: dict  # a ResNet state dict
    history: list[dict]  # the trial's epochs up to ``epoch``
    config: dict  # the trial's flat config


class NoEpochWeights(ValueError):
    """A checkpoint holds no epoch's weights of the trial (the message says why)."""


def _few(names: list[str]) -> str:
    more = f", … ({len(names)} in all)" if len(names) > SHOWN_NAMES else ""
    return ", ".join(names[:SHOWN_NAMES]) + more


def _experiment(sweep: str, storage_path: str | None) -> str:
    """The sweep's folder (find_experiment); an unknown name says which sweeps are there."""
    try:
        return find_experiment(sweep, storage_path)
    except SpecError as err:
        if "://" in sweep and not storage.is_local(sweep):
            raise
        root = storage.normalize(storage_path or storage.default_storage_path(), "--storage-path")
        sweeps = sorted(
            Path(f).name for f in storage.subfolders(root, "") if storage.exists(storage.join(f, SPEC_FILE))
        )
        there = f"; sweeps there: {_few(sweeps)}" if sweeps else "; there are no sweeps there"
        raise SpecError("", f"{err}{there}") from None


def _trials(experiment: str) -> tuple[list[_Trial], str]:
    """Every trial of the sweep (array members each), in the order Tune made them, named as
    `run` names them; and the sweep's metric."""
    parsed = parse_spec(storage.read_text(experiment, SPEC_FILE), source=f"{experiment}/{SPEC_FILE}")
    storage_path, name = experiment.rstrip("/").rsplit("/", 1)
    # Only the sweep's searched keys are read: no tracking URI is checked, no MLflow reached.
    prep = Prepared(parsed, make_plan(parsed, with_models=False), storage_path, name, "", parsed.spec.name)
    namer = TrialNamer(varying_keys(prep))
    try:
        tune = [(experiment, t) for t in tune_trials(experiment)]
    except SpecError:
        raise SweepError(f"{experiment} holds no Tune records of trials: the sweep never started one") from None
    # A grown sweep's later trials are in its further Tune experiments (stages.py).
    for stage in stages(experiment, 0)[1:]:
        if started(experiment, stage):
            tune += [(stage.path(experiment), t) for t in tune_trials(stage.path(experiment))]
    trials, gone = [], retired(experiment)
    # Tune's records list trials in no fixed order; its ids count up as a driver creates them.
    for path, trial in sorted(tune, key=lambda pt: (pt[0], pt[1].trial_id)):
        folder = storage.join(path, trial.path.rstrip("/").rsplit("/", 1)[-1])
        members = members_of(trial.config)
        for k, config in enumerate(members or [trial.config]):
            member = None if members is None else k
            trials.append(_Trial(namer(config), folder, member, trial_identity(config) in gone))
    return trials, parsed.spec.metric.name


def _named(trials: list[_Trial], name: str, sweep: str) -> _Trial:
    """The trial named ``name`` (its readable name, or a single trial's Tune folder name)."""
    found = [t for t in trials if name in (t.name, Path(t.folder).name if t.member is None else None)]
    if not found:
        raise SpecError("--trial", f"no trial {name!r} in sweep {sweep}; its trials: {_few([t.name for t in trials])}")
    if len(found) > 1:
        raise SpecError(
            "--trial",
            f"{len(found)} trials of sweep {sweep} are named {name!r}: give its Tune folder's name instead, "
            f"one of {_few([Path(t.folder).name for t in found])}",
        )
    return found[0]


def _records(folder: str) -> list[dict]:
    """Tune's record of a trial's reports (result.json), in order."""
    text = storage.read_text(folder, ray_compat.RESULT_FILE) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _epochs(records: list[dict], member: int | None) -> list[dict]:
    """The trained epochs a trial's (or member's) records hold, once each: its reports and the
    epochs sent again after a restore; a diverged report (its val error set to 1) is none."""
    epochs: dict[int, dict] = {}
    for record in records:
        own = record if member is None else member_records(record).get(member)
        if own is None:
            continue
        for earlier in json.loads(own.get(EARLIER_EPOCHS) or "[]"):
            epochs.setdefault(int(earlier[M.EPOCH]), earlier)
        if own.get(STATUS) != str(Status.DIVERGED) and M.EPOCH in own:
            epochs[int(own[M.EPOCH])] = own
    return list(epochs.values())


def _has_checkpoint(trial: _Trial) -> bool:
    return bool(storage.subfolders(trial.folder, "checkpoint_"))


def _best(trials: list[_Trial], metric: str, sweep: str) -> _Trial:
    """The trial with the lowest ``metric`` at its best epoch on it, among those with a
    checkpoint (the earliest trial on ties)."""
    records: dict[str, list[dict]] = {}
    ranked = []
    for order, trial in enumerate(trials):
        if trial.retired or not _has_checkpoint(trial):
            continue
        if trial.folder not in records:  # an array's members share one
            records[trial.folder] = _records(trial.folder)
        epochs = [e for e in _epochs(records[trial.folder], trial.member) if metric in e]
        best = M.best_epoch(epochs, val_error=lambda e: float(e[metric]))
        if best is not None:
            ranked.append((float(best[metric]), order, trial))
    if not ranked:
        raise SweepError(f"no trial of sweep {sweep} has a checkpoint: none finished an epoch")
    return min(ranked, key=lambda r: r[:2])[2]


def trial_weights(state: dict, member: int | None, checkpoint: str = "") -> Weights:
    """The weights of a trial in a checkpoint's trainer state (``Trainer.state_dict``), or of
    array member ``member`` in an array's (``ArrayTrainer.state_dict``: each member's state is
    a single trial's, its epoch that of its own history). NoEpochWeights for a member that had
    diverged: it was frozen at the step that diverged, partway into an epoch."""
    if member is None:
        return Weights(checkpoint, state["epoch"], state["model"], state["history"], state["config"])
    own = state["members"][member]
    if own["status"] == str(Status.DIVERGED):
        raise NoEpochWeights("the member had diverged: its weights there are of no epoch's end")
    history = own["history"]
    return Weights(checkpoint, len(history), own["model"], history, state["configs"][member])


def _weights(trial: _Trial) -> tuple[list[Weights], list[str]]:
    """The trial's weights in each of its checkpoints, and a line per checkpoint passed over."""
    import torch

    found, passed = [], []
    for folder in storage.subfolders(trial.folder, "checkpoint_"):
        name = Path(folder).name
        try:
            data = storage.read_bytes(folder, CHECKPOINT_FILE, only_missing_is_none=True)
            if not data:
                raise NoEpochWeights("no state file" if data is None else "an empty file")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            found.append(trial_weights(state, trial.member, name))
        except NoEpochWeights as err:
            passed.append(f"{name} ({err})")
        except Exception as err:
            passed.append(f"{name} ({passed_over_reason(err)})")
    return found, passed


def exported_weights(name: str, weights: list[Weights]) -> tuple[Weights, dict, str | None]:
    """Of a trial's checkpoints' weights, those to export: its best epoch's (M.best_epoch of
    its whole history) when a checkpoint of that epoch is kept, else the latest; with that
    epoch's metrics and, when they are not the best epoch's, a line saying so."""
    latest = max(weights, key=lambda w: w.epoch)
    best = M.best_epoch(latest.history)
    chosen = next((w for w in weights if best is not None and w.epoch == best[M.EPOCH]), latest)
    row = next(h for h in latest.history if h[M.EPOCH] == chosen.epoch)
    note = None
    if best is not None and chosen.epoch != best[M.EPOCH]:
        note = (
            f"note: trial {name}: its best epoch's ({best[M.EPOCH]}) weights were not kept; exporting epoch "
            f"{chosen.epoch}, its latest checkpoint (test err {row[M.TEST_ERROR]:.2%}; the logged "
            f"{best[M.TEST_ERROR]:.2%} is epoch {best[M.EPOCH]}'s)"
        )
    return chosen, row, note


def export_model(sweep: str, out: Path, *, trial: str | None, storage_path: str | None) -> str:
    """Export the sweep's trial named ``trial`` (None: its best trial by the sweep's metric) to
    ``out``; returns the line saying what was written. SpecError for an unknown sweep or trial
    (bad input), SweepError when there are no weights to export."""
    from resnet_core.analysis import count_params
    from resnet_core.config import RunConfig
    from resnet_core.errors import ConfigError
    from resnet_core.export import load_export, save_export

    experiment = _experiment(sweep, storage_path)
    sweep_name = experiment.rstrip("/").rsplit("/", 1)[-1]
    trials, metric = _trials(experiment)
    chosen = _best(trials, metric, sweep_name) if trial is None else _named(trials, trial, sweep_name)
    weights, passed = _weights(chosen)
    for line in passed:
        print(f"warning: trial {chosen.name}: passed over {line}", file=sys.stderr)
    if not weights:
        why = "none of its checkpoints can be used" if passed else f"its folder {chosen.folder} holds none"
        raise SweepError(f"trial {chosen.name} of sweep {sweep_name} has no checkpoint to export: {why}")
    exported, row, note = exported_weights(chosen.name, weights)
    if note:
        print(note, file=sys.stderr)
    try:
        run = RunConfig.from_flat(exported.config)
    except ConfigError as err:
        raise SweepError(f"trial {chosen.name}: its checkpoint's config is not this version's ({err})") from None
    replaced = out.exists()
    save_export(
        out,
        exported.model,
        run,
        epoch=exported.epoch,
        metrics={k: v for k, v in row.items() if k in M.METRICS},
        source={
            "sweep": sweep_name,
            "trial": chosen.name,
            "experiment_path": experiment,
            "checkpoint": f"{Path(chosen.folder).name}/{exported.checkpoint}",
            "array_member": chosen.member,
            "config": exported.config,
        },
    )
    model = load_export(out).model  # read back: what was written loads
    what = f"{chosen.name} of sweep {sweep_name}, epoch {exported.epoch}"
    return (
        f"exported {what} (val err {row[M.VAL_ERROR]:.2%}, test err {row[M.TEST_ERROR]:.2%}; "
        f"{count_params(model):,} params) to {out}{' (replaced the file there)' if replaced else ''}"
    )
