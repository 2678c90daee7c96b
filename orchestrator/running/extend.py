"""`run FILE --extend` (and `plan FILE --extend`): grow the sweep of that name to the edited file.
sweepfile/growth.py says which of the file's trials are done, unfinished or new; the new ones
run as a further Tune experiment of the same sweep (stages.py), unfinished ones continue from
their checkpoints, and MLflow keeps one parent run (tracking/sweep_edits.py)."""

from __future__ import annotations

import json

from orchestrator.persistence import storage
from orchestrator.running.stages import earlier_trials, record_extension
from orchestrator.running.sweep import (
    SPEC_FILE,
    TRACKING_FILE,
    Prepared,
    SweepError,
    continue_sweep,
    holding,
    open_sweep,
    overrides_tag,
    run_sweep,
    saved_spec_text,
    sweep_tracking,
    write_report,
)
from orchestrator.sweepfile.growth import Growth, plan_growth
from orchestrator.sweepfile.plan import plan_json
from orchestrator.sweepfile.spec import SpecError, parse_spec
from orchestrator.tracking.mlflow_store import redact
from orchestrator.tracking.sweep_edits import record_growth

__all__ = ["extend_sweep", "growth_of"]


def growth_of(prep: Prepared) -> tuple[str, Growth] | None:
    """The folder of the sweep of this file's name in the storage path and what the file changes
    in it; None when no sweep of that name is there."""
    spec = prep.parsed.spec
    path = storage.join(prep.storage_path, spec.name)
    saved = storage.read_text(path, SPEC_FILE)
    if saved is None:
        return None
    before = parse_spec(saved, source=f"{path}/{SPEC_FILE}").spec
    optuna = spec.search.algorithm == "optuna"
    if optuna != (before.search.algorithm == "optuna"):
        raise SpecError(
            "search.algorithm",
            f"{spec.search.algorithm}: the sweep {spec.name!r} ran with {before.search.algorithm}; a sweep grows "
            f"with the same kind of search (Optuna draws, or planned grid/random points): give this file another name",
        )
    tracking = json.loads(storage.read_text(path, TRACKING_FILE) or "{}")
    earlier = earlier_trials(path, tracking.get("num_trials", 0))
    fixed_before, fixed_now = before.fixed_flat(), spec.fixed_flat()
    if optuna:  # a draw of another space is not a draw of this one
        fixed_before["search.space"], fixed_now["search.space"] = before.search.space, spec.search.space
    planned = None if optuna else [t.config for t in prep.plan.trials]
    return path, plan_growth(earlier, planned, samples=prep.plan.num_trials, before=fixed_before, now=fixed_now)


def say_growth(name: str, growth: Growth) -> None:
    print(growth.summary(name), flush=True)
    if line := growth.changed_line():
        print(line, flush=True)


def extend_sweep(
    prep: Prepared, *, address: str | None = None, tracking_uri: str | None = None, report: bool = True
) -> int:
    """`run FILE --extend`: the sweep of the file's name grows to the file (or starts, when there
    is none yet). Says what is done and what is new before anything starts. ``tracking_uri``: the
    one given on the command line (default: the sweep's own)."""
    name = prep.parsed.spec.name
    if growth_of(prep) is None:
        print(f"no sweep named {name!r} in {prep.storage_path} yet: starting it", flush=True)
        return run_sweep(prep, address=address, report=report)
    path = storage.join(prep.storage_path, name)
    given = tracking_uri or prep.parsed.spec.tracking.tracking_uri  # else the sweep's: it logs there
    tracking, uri = sweep_tracking(path, prep.parsed.spec, given)  # the same MLflow, or exit 2
    with holding(path, name) as lock:
        # Worked out under the lock: another driver may have grown the sweep meanwhile.
        _, growth = growth_of(prep)
        say_growth(name, growth)
        if growth.removed and growth.unfinished_removed:
            print(
                f"note: {growth.unfinished_removed} of the trials no longer in the file are unfinished: they finish "
                f"with the earlier trials (Tune continues every unfinished trial of an experiment)",
                flush=True,
            )
        try:  # MLflow first: if it fails, nothing here has changed
            record_growth(
                uri,
                tracking.get("experiment") or name,
                tracking.get("sweep_key", ""),
                tags=overrides_tag(prep.parsed),
                artifacts={SPEC_FILE: saved_spec_text(prep.parsed), "plan.json": plan_json(prep.plan)},
                removed=growth.removed,
            )
        except Exception as err:
            raise SweepError(
                f"MLflow at {uri} does not answer ({type(err).__name__}: {redact(str(err))[:200]}); nothing was "
                f"started: run the same command again once it does"
            ) from None
        # One write decides the growth (its stage carries the file it was planned from); then
        # the sweep is the new file's: `resume` continues it with this file.
        optuna = prep.parsed.spec.search.algorithm == "optuna"
        stage = (growth.new_samples, None if optuna else growth.new, saved_spec_text(prep.parsed))
        record_extension(path, growth.removed, stage if growth.new_samples else None)
        storage.write_text(path, SPEC_FILE, saved_spec_text(prep.parsed))
        grown, tracking = open_sweep(path, uri)
        if not growth.new_samples and not growth.unfinished:
            print(f"nothing to train: every trial of the file is done (`resnet-sweep status {name}`)", flush=True)
            if report:
                write_report(grown)
            return 0
        return continue_sweep(grown, tracking, lock, address=address, report=report)
