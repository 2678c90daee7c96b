"""A random or Optuna search at a glance: a parallel-coordinates figure with an axis per searched
setting of the sweep file (log for a loguniform one, a tick per value for a list, linear
otherwise) and the sweep's metric last, a line per trial."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from orchestrator.report.document import Figure, Report
from orchestrator.report.nets import format_value, searched_value
from orchestrator.tracking.records import SweepRecord
from resnet_core.metrics import Status

__all__ = ["add_parallel_coordinates", "shows_parallel_coordinates"]

# An axis: its label, its ticks as (position in [0, 1], text) and where it places a value.
Axis = tuple[str, list[tuple[float, str]], Callable[[Any], float]]


def shows_parallel_coordinates(spec) -> bool:
    """Random and Optuna sweeps that search two settings or more (one is a scatter, not a search view)."""
    return spec.search.algorithm in ("random", "optuna") and len(spec.search.space) >= 2


def _text(value: Any) -> str:
    return format_value(list(value) if isinstance(value, tuple) else value)  # MLflow gives tuples back


def _categorical(label: str, categories: list[Any]) -> Axis:
    """The values in the sweep file's order, evenly spaced (any other value seen, after them)."""
    texts = list(dict.fromkeys(_text(c) for c in categories))
    at = {t: i / (len(texts) - 1) if len(texts) > 1 else 0.5 for i, t in enumerate(texts)}
    return label, [(p, t) for t, p in at.items()], lambda v: at[_text(v)]


def _numeric(label: str, low: float, high: float, *, log: bool, integer: bool) -> Axis:
    from matplotlib.ticker import MaxNLocator

    scale = math.log10 if log else float
    a, b = scale(low), scale(high)

    def place(value: Any) -> float:
        return 0.5 if a == b else (scale(value) - a) / (b - a)

    # The ends, and between them the decades (log) or round numbers not crowding the ends.
    if a == b:
        inner = []
    elif log:
        inner = [10.0**k for k in range(math.ceil(a), math.floor(b) + 1)]
    else:
        inner = MaxNLocator(5, integer=integer).tick_values(low, high)
    values = [low, *(v for v in inner if 0.06 < place(v) < 0.94), high]
    return label, [(place(v), f"{v:.3g}") for v in dict.fromkeys(values)], place


def _fits(dim: Any, value: Any) -> bool:
    """Whether an axis can place the value: any on a list's axis, a number (> 0 for log) on a range's."""
    if value is None:
        return False
    if isinstance(dim, list) or "choice" in dim:
        return True
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return number and ("loguniform" not in dim or value > 0)


def _axis(key: str, dim: Any, seen: list[Any]) -> Axis:
    """The axis of a searched setting: its range from the sweep file, widened to what the trials hold."""
    if isinstance(dim, list):
        return _categorical(key, [*dim, *seen])
    kind, arg = next(iter(dim.items()))
    if kind == "choice":
        return _categorical(key, [*arg, *seen])
    low, high = min(arg[0], *seen), max(arg[1], *seen)
    return _numeric(key, low, high, log=kind == "loguniform", integer=kind == "int")


def add_parallel_coordinates(report: Report, record: SweepRecord, spec, metric: str) -> None:
    """The figure, for the trials that ended (completed, or stopped early: the searcher saw them
    too), each at its best value of the sweep's metric."""
    from orchestrator.report.figures import parallel_coordinates

    ended = (str(Status.COMPLETED), str(Status.STOPPED_EARLY))
    space = spec.search.space
    trials = [
        (t, min(values))
        for t in record.trials
        if t.status in ended
        and (values := [h[metric] for h in t.history if h.get(metric) is not None])
        and all(_fits(dim, searched_value(t.config, k)) for k, dim in space.items())
    ]
    if not trials:
        return
    axes = [_axis(k, dim, [searched_value(t.config, k) for t, _ in trials]) for k, dim in space.items()]
    error = metric.endswith("error")
    shown = [100 * v if error else v for _, v in trials]
    axes.append(_numeric(f"{metric} (%)" if error else metric, min(shown), max(shown), log=False, integer=False))
    lines = [
        (
            [place(searched_value(t.config, k)) for (_, _, place), k in zip(axes, space)] + [axes[-1][2](value)],
            t.status == str(Status.STOPPED_EARLY),
        )
        for (t, _), value in zip(trials, shown)
    ]
    stopped = sum(stopped for _, stopped in lines)
    report.h2(f"Search: the searched settings against {metric}")
    report.add(
        Figure(
            "parallel_coordinates.png",
            parallel_coordinates([(label, ticks) for label, ticks, _ in axes], lines, metric=metric),
            f"A line per trial that ended ({len(lines)}"
            + (f"; {stopped} stopped early, dashed" if stopped else "")
            + f"), at its best {metric} over the epochs it trained, coloured by it (dark: lower). An axis per "
            "searched setting of the sweep file, over its range there: logarithmic for a loguniform setting, a "
            "tick per value for a list, linear otherwise.",
        )
    )
