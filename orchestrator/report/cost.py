"""Accuracy against cost: each completed trial's test error against its parameters, multiply-adds
and measured training time, and the trials that no other beats on both (the Pareto front of
each cost). The papers' real question is error against depth and compute; this view answers it
for any sweep."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby

from orchestrator.report.document import Count, Figure, Number, Report, Table
from orchestrator.sweepfile.model_counts import Footprint
from orchestrator.tracking.records import TrialRecord
from resnet_core import metrics as M
from resnet_core.metrics import Status

__all__ = ["COSTS", "TrialCost", "add_pareto", "footprint", "pareto_front", "trial_costs"]

# The costs, as (TrialCost attribute, axis and table name).
COSTS = (
    ("params", "parameters"),
    ("macs", "multiply-adds (one image, forward)"),
    ("seconds", "training time (s), measured"),
)


def footprint(config: dict) -> Footprint | None:
    """The net's exact counts from its flat config (the plan's count cache: no torch for a known
    net); None where the config builds no net."""
    from orchestrator.sweepfile.model_counts import model_footprint
    from resnet_core.config import RunConfig, num_classes

    try:
        cfg = RunConfig.from_flat(config)
        return model_footprint(cfg.model, num_classes(cfg.dataset), cfg.dataset.image_size)
    except Exception:
        return None


def training_seconds(trial: TrialRecord) -> float | None:
    """The sum of the trial's epoch_seconds: its training passes as measured (evaluation not
    included); None when an epoch lacks the measurement."""
    seconds = [h.get(M.EPOCH_SECONDS) for h in trial.history]
    return math.fsum(seconds) if seconds and None not in seconds else None


@dataclass(frozen=True)
class TrialCost:
    trial: TrialRecord
    error: float  # test error at the epoch chosen on val (a fraction)
    params: int | None
    macs: int | None
    seconds: float | None

    @property
    def completed(self) -> bool:
        return self.trial.status == str(Status.COMPLETED)


def trial_costs(trials: list[TrialRecord]) -> list[TrialCost]:
    """The trials that ended with a best epoch: completed ones, and those stopped early (drawn,
    but never on a front: they trained fewer epochs, so their time is not their configuration's)."""
    ended = (str(Status.COMPLETED), str(Status.STOPPED_EARLY))
    out = []
    for t in trials:
        if t.status in ended and t.best is not None:
            counts = footprint(t.config)
            out.append(
                TrialCost(
                    t,
                    t.best[M.TEST_ERROR],
                    counts.params if counts else None,
                    counts.macs if counts else None,
                    training_seconds(t),
                )
            )
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """The indices of the (cost, error) points that no other point dominates (as low or lower on
    both, strictly lower on one), in order of cost; equal points are both on the front."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front: list[int] = []
    best = math.inf
    for _, same_cost in groupby(order, key=lambda i: points[i][0]):
        group = list(same_cost)  # sorted by error: the first has the lowest at this cost
        low = points[group[0]][1]
        if low < best:
            front += [i for i in group if points[i][1] == low]
            best = low
    return front


def add_pareto(report: Report, trials: list[TrialRecord], tables: dict) -> None:
    """The Pareto figure (one panel per cost) and the table of each cost's non-dominated trials."""
    from orchestrator.report.figures import pareto_panels

    costs = trial_costs(trials)
    done = [c for c in costs if c.completed]
    if not done:
        return
    panels, rows = {}, []
    for attr, name in COSTS:
        measured = [c for c in done if getattr(c, attr) is not None]
        if not measured:
            continue
        front = [measured[i] for i in pareto_front([(getattr(c, attr), c.error) for c in measured])]
        stopped = [c for c in costs if not c.completed and getattr(c, attr) is not None]
        panels[name] = (
            [(getattr(c, attr), 100 * c.error) for c in measured],
            [(getattr(c, attr), 100 * c.error) for c in stopped],
            [(getattr(c, attr), 100 * c.error, c.trial.name) for c in front],
        )
        rows += [
            [
                name,
                c.trial.name,
                c.error,
                None if c.params is None else Count(c.params),
                None if c.macs is None else Count(c.macs),
                None if c.seconds is None else Number(c.seconds),
            ]
            for c in front
        ]
    if not panels:  # no net these configs build, and no time measured
        return
    report.h2("Accuracy against cost")
    stopped = len(costs) - len(done)
    report.add(
        Figure(
            "pareto.png",
            pareto_panels(panels),
            f"Test error (%, at the epoch chosen on val) of the {len(done)} completed trials against each cost; "
            "the trials no other beats on both (lower or equal error at lower or equal cost) are marked and "
            "joined: the Pareto front. A cost axis is logarithmic where its values span a decade or more."
            + (
                f" Hollow grey: {stopped} trial(s) stopped early, drawn but never on a front (they trained fewer "
                "epochs, so their time is not their configuration's)."
                if stopped
                else ""
            ),
        )
    )
    table = Table(
        "pareto",
        ["cost", "trial", "test err %", "params", "multiply-adds", "training time (s), measured"],
        rows,
        "The non-dominated trials of each cost, cheapest first. Multiply-adds: one image's forward pass. "
        "Training time (s), measured: the sum of the trial's epoch_seconds (its training passes, evaluation "
        "not included) on the device it ran on, beside whatever else ran there; the trials of one fused array "
        "each show the array's time.",
    )
    report.add(table)
    tables["pareto"] = table
