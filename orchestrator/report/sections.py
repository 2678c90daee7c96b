"""The report's sections, each read from the sweep's trials: Table 6, the 10-crop table, Figures 6
and 7, a pivot per varied setting, Optuna's importances, ASHA's rungs and the trials table. Each
`add_*` appends its heading, blocks and notes to the report, and its tables (by CSV slug) to
``tables`` so that `write_report` writes one CSV per table; a section with nothing to show adds
nothing."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from typing import Any

from orchestrator import trial_table
from orchestrator.report.cost import footprint
from orchestrator.report.document import Count, Figure, Number, Report, Stat, Table, percent
from orchestrator.report.nets import (
    DEPTH,
    RESIDUAL,
    best_test_errors,
    completed,
    final_train_errors,
    format_value,
    net_label,
    net_order,
    searched_value,
    value_order,
)
from orchestrator.report.paper import (
    cifar_recipe_differences,
    imagenet_recipe_differences,
    paper_cifar_error,
    paper_imagenet_errors,
)
from orchestrator.tracking.records import SweepRecord, TrialRecord
from orchestrator.vocabulary import describe_status
from resnet_core import metrics as M
from resnet_core.config import FOLDER_DATASETS as FOLDERS
from resnet_core.metrics import Status

__all__ = [
    "add_asha",
    "add_figure6",
    "add_figure7",
    "add_optuna",
    "add_pivot",
    "add_table6",
    "add_ten_crop",
    "add_trials",
    "asha_rungs",
]


def _params(config: dict) -> Count | None:
    """The net's parameter count, from its config: the plan's count (cached by full config)."""
    counts = footprint(config)
    return Count(counts.params) if counts else None


def _unless_differs(paper: Any, differs: list[str], notes: set[str]) -> Any:
    """The paper's numbers where the trials used its recipe; else None, and how they differ in ``notes``
    (said once under the table)."""
    if paper is not None and differs:
        notes.add(", ".join(differs))
        return None
    return paper


def add_table6(report: Report, groups: dict[str, list[TrialRecord]], varying: list[str], tables: dict) -> None:
    """2015 Table 6: test and train error by depth, a row per net with its plain and residual
    versions side by side, and the paper's error where the trials used its recipe."""
    rows_by_key: dict[tuple, dict] = {}
    for label, trials in groups.items():
        config = trials[0].config
        key = (config.get(DEPTH), *(value_order(config.get(k)) for k in varying if k not in (DEPTH, RESIDUAL)))
        rows_by_key.setdefault(key, {})["residual" if config.get(RESIDUAL, True) else "plain"] = (label, trials)
    rows, notes, unfinished = [], set(), 0
    for key in sorted(rows_by_key, key=lambda k: (k[0] or 0, k[1:])):
        pair = rows_by_key[key]
        label, trials = pair.get("residual") or pair["plain"]
        config = trials[0].config
        paper = _unless_differs(paper_cifar_error(config), cifar_recipe_differences(config), notes)
        row = [label.replace("ResNet-", "").replace("plain-", ""), _params(config)]
        for family in ("plain", "residual"):
            done = completed(pair[family][1]) if family in pair else []
            row += [Stat.of(best_test_errors(done)), Stat.of(final_train_errors(done))]
        if any(row[2:6]):
            rows.append(row + [percent(paper)])
        else:
            unfinished += 1
    table = Table(
        "table6",
        [
            "net",
            "params",
            "plain test err %",
            "plain train err %",
            "residual test err %",
            "residual train err %",
            "paper test err %",
        ],
        rows,
        "Test error at the epoch chosen on val; train error at the last epoch; mean ± std (n−1) over "
        "completed trials (seeds). Paper: 2015 Table 6 (CIFAR-10, option A) and 2016 Table 3.",
    )
    report.h2("Table 6: error by depth, plain and residual")
    report.add(table)
    if unfinished:
        report.p(
            f"{unfinished} more net(s) have no completed trial yet (stopped early, failed or running): see Trials."
        )
    datasets = {t.config.get("dataset.name") for ts in groups.values() for t in ts} - {"cifar10", "cifar100"}
    if datasets & set(FOLDERS):
        report.p(
            "For image folders this table has the test set's centre crop at the epoch chosen on val; the paper's "
            "ImageNet errors are 10-crop, beside ours in the next table."
        )
    if datasets - set(FOLDERS):
        report.p(
            f"The papers report CIFAR-10/100 and ImageNet; this sweep trains on "
            f"{', '.join(sorted(map(str, datasets - set(FOLDERS))))}: no paper numbers to set beside these."
        )
    elif notes:
        report.p(
            "The paper's numbers are left out: these trials do not use the paper's CIFAR recipe "
            f"({'; '.join(sorted(notes))})."
        )
    tables["table6"] = table


def add_ten_crop(report: Report, groups: dict[str, list[TrialRecord]], tables: dict) -> None:
    """Image folders: the final model's 10-crop test errors (top-1, top-5), beside 2015 Tables 2
    and 3 where the trials used the paper's ImageNet recipe and model."""
    rows, notes = [], set()
    for label, trials in groups.items():
        config = trials[0].config
        if config.get("dataset.name") not in FOLDERS:
            continue
        done = completed(trials)
        top1, top5 = ([t.final[key] for t in done if key in t.final] for key in M.FINAL_METRICS)
        paper = _unless_differs(paper_imagenet_errors(config), imagenet_recipe_differences(config), notes)
        rows.append(
            [
                label,
                _params(config),
                Stat.of(top1),
                Stat.of(top5),
                Stat.of(best_test_errors(done)),
                *map(percent, paper or (None, None)),
            ]
        )
    if not rows:
        return
    table = Table(
        "ten_crop",
        [
            "net",
            "params",
            "top-1 10-crop err %",
            "top-5 10-crop err %",
            "top-1 centre-crop err %",
            "paper top-1 %",
            "paper top-5 %",
        ],
        rows,
        "The final model on the test set (the official val images): 10 crops, the four corners and the "
        "centre and their flips, softmax averaged; centre crop: the epoch chosen on val. Mean ± std (n−1) "
        "over completed trials. Paper: 2015 Table 2 (top-1) and Table 3 (10-crop).",
    )
    report.h2("10-crop test error (2015 Tables 2 and 3)")
    report.add(table)
    if notes:
        report.p(
            "The paper's numbers are left out where the trials do not use its ImageNet recipe and model "
            f"({'; '.join(sorted(notes))})."
        )
    tables["ten_crop"] = table


def _x_axis(trials: list[TrialRecord]) -> tuple[str, Callable[[dict], float]]:
    if all(M.ITERATION in h for t in trials for h in t.history):
        return "iterations", lambda h: h[M.ITERATION]
    return "epochs", lambda h: h[M.EPOCH]  # runs logged before the iteration metric existed


def _mean_curve(trials: list[TrialRecord], key: str, x: Callable[[dict], float]) -> list[tuple[float, float]]:
    points: dict[float, list[float]] = {}
    for t in trials:
        for h in t.history:
            if h.get(key) is not None:
                points.setdefault(x(h), []).append(h[key])
    return [(k, statistics.fmean(v)) for k, v in sorted(points.items())]


def _colours(labels: list[str]) -> dict[str, str]:
    """One colour per net apart from plain/residual, so plain-56 and ResNet-56 match."""
    from orchestrator.report.figures import PALETTE

    stem = {label: re.sub(r"^(ResNet|plain)-", "", label) for label in labels}
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(dict.fromkeys(stem.values()))}
    return {label: colour[stem[label]] for label in labels}


def add_figure6(report: Report, groups: dict[str, list[TrialRecord]]) -> None:
    """2015 Fig. 6: the nets' mean error curves, plain and residual in two panels."""
    from orchestrator.report.figures import error_curves

    trials = [t for ts in groups.values() for t in ts if t.history]
    if not trials:
        return
    x_label, x = _x_axis(trials)
    panels: dict[str, dict] = {}
    for label, group in groups.items():
        family = "residual nets" if group[0].config.get(RESIDUAL, True) else "plain nets"
        shown = completed(group) or group  # seeds that dropped out would make the mean jump
        curves = {
            kind: _mean_curve(shown, key, x)
            for kind, key in (("train", M.TRAIN_ERROR), ("val", M.VAL_ERROR), ("test", M.TEST_ERROR))
        }
        panels.setdefault(family, {})[label] = curves
    panels = dict(sorted(panels.items(), key=lambda kv: kv[0] != "plain nets"))
    png = error_curves(panels, x_label=x_label, colours=_colours(list(groups)))
    report.h2("Figure 6: training curves")
    report.add(
        Figure(
            "fig6.png",
            png,
            f"Error (%) against {x_label}, mean over completed seeds; dashed: training error, bold: "
            "test error, faint: val error (2015 Fig. 6 conventions).",
        )
    )


def _responses(trials: list[TrialRecord]) -> list[float] | None:
    """Mean over seeds of each layer's response std."""
    runs = [t.responses for t in trials if t.responses]
    if not runs or len({len(r) for r in runs}) != 1:
        return None
    return [statistics.fmean(layer) for layer in zip(*runs)]


def add_figure7(report: Report, groups: dict[str, list[TrialRecord]], tables: dict) -> None:
    """2015 Fig. 7: each net's layer responses, and a table of their summary numbers."""
    from orchestrator.report.figures import response_panels

    nets = {
        label: (r, bool(group[0].config.get(RESIDUAL, True)))
        for label, group in groups.items()
        if (r := _responses(completed(group)))
    }
    if not nets:
        return
    report.h2("Figure 7: layer responses")
    report.add(
        Figure(
            "fig7.png",
            response_panels(nets, colours=_colours(list(nets))),
            "Std of each 3×3 layer's response (after BN, before ReLU/addition; eval mode, on the val "
            "split), by layer index (top) and sorted by magnitude (bottom); plain dashed, residual solid "
            "(2015 Fig. 7).",
        )
    )
    rows = [
        [label, len(r), *(Number(f(r)) for f in (statistics.fmean, statistics.median, max, min))]
        for label, (r, _) in nets.items()
    ]
    table = Table(
        "fig7",
        ["net", "3×3 layers", "mean std", "median std", "max std", "min std"],
        rows,
        "Response std per net (mean over seeds of each layer, then over layers). A few large early "
        "layers move the mean; the median and the sorted curve are the sturdier comparison.",
    )
    report.add(table)
    tables["fig7"] = table


def add_pivot(
    report: Report,
    trials: list[TrialRecord],
    varying: list[str],
    key: str,
    title: str,
    slug: str,
    tables: dict,
    note: str = "",
) -> None:
    """Test error for each value of ``key`` (columns) against the nets otherwise alike (rows);
    ``note`` opens the caption (what the values mean)."""
    caption = (f"{note} " if note else "") + "Test error %, mean ± std (n−1) over completed trials."
    rest = [k for k in varying if k != key]
    values = sorted(
        {repr(t.config.get(key)): t.config.get(key) for t in trials}.items(), key=lambda kv: value_order(kv[1])
    )
    rows: dict[str, dict[str, list[TrialRecord]]] = {}
    for t in sorted(trials, key=lambda t: net_order(t.config, rest)):
        rows.setdefault(net_label(t.config, rest), {}).setdefault(repr(t.config.get(key)), []).append(t)
    table_rows = []
    for label, cells in rows.items():
        stats = [Stat.of(best_test_errors(completed(cells.get(r, [])))) for r, _ in values]
        if any(stats):  # nets with no completed trial have nothing to compare
            table_rows.append([label, *stats])
    table = Table(slug, ["net", *(f"{format_value(v)} test err %" for _, v in values)], table_rows, caption)
    report.h2(title)
    report.add(table)
    tables[slug] = table


def add_optuna(report: Report, record: SweepRecord, parsed, metric: str, tables: dict) -> None:
    """What an Optuna search found: fANOVA's importance of each searched setting (the trials read
    back into a study over the sweep's own space) and the best configuration."""
    import optuna

    from orchestrator.sweepfile.space import optuna_space

    report.h2("Search: what mattered (Optuna)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = optuna.create_study()
    optuna_space(parsed)(probe.ask())
    distributions = probe.trials[0].distributions
    scored = [
        (t, min(h[metric] for h in t.history if h.get(metric) is not None))
        for t in record.trials
        if any(h.get(metric) is not None for h in t.history)
    ]
    study = optuna.create_study(direction="minimize")
    for t, value in scored:
        params = {k: v for k in distributions if (v := searched_value(t.config, k)) is not None}
        if len(params) == len(distributions):
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    values = {t.value for t in study.trials}
    if len(values) < 2:
        report.p(
            f"No importances: they need trials with at least two different values of {metric}; this sweep has "
            f"{len(study.trials)} trial(s) with {len(values)}."
        )
    else:
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
        except (RuntimeError, ValueError) as err:  # fANOVA on a degenerate set of trials
            report.p(f"No importances: Optuna's fANOVA could not weigh these {len(study.trials)} trials ({err}).")
        else:
            table = Table(
                "importance",
                ["hyperparameter", "importance"],
                [[k, Number(v)] for k, v in importances.items()],
                f"Optuna's fANOVA importance (seed 0) of each searched setting for the best {metric} of "
                f"{len(study.trials)} trials (trials stopped early count with the epochs they trained).",
            )
            report.add(table)
            tables["importance"] = table
    if scored:
        best_trial, best_value = min(scored, key=lambda tv: (tv[1], tv[0].name))
        shown = ", ".join(f"{k} = {format_value(searched_value(best_trial.config, k))}" for k in distributions)
        report.p(
            f"Best configuration (lowest {metric}, chosen on val): **{best_trial.name}** with {shown}: "
            f"{metric} {_metric_text(metric, best_value)}."
        )


def _metric_text(metric: str, value: float) -> str:
    return f"{100 * value:.2f}%" if metric.endswith("error") else f"{value:.4f}"


def asha_rungs(grace: int, factor: float, max_t: int) -> list[int]:
    """The epochs where ASHA decides: Ray's AsyncHyperBandScheduler (one bracket) puts rungs at
    grace·factor^k and records a trial at its first result at or past one."""
    import numpy as np  # np.log as Ray computes it: the same rung count at exact powers (log 9 / log 3)

    count = int(np.log(max_t / grace) / np.log(factor) + 1)
    return sorted({math.ceil(grace * factor**k) for k in range(count)})


def add_asha(report: Report, record: SweepRecord, spec, metric: str, tables: dict) -> None:
    """ASHA's rungs: how many trials reached each, the cut-off there, who stopped, and the epochs
    it saved against the full grid."""
    epochs_per_trial = int(record.plan.get("epochs_per_trial") or max((t.epochs for t in record.trials), default=0))
    max_t = spec.scheduler.max_t or epochs_per_trial
    # At max_t a trial simply ends: Ray stops it before its bracket compares anything.
    rungs = [r for r in asha_rungs(spec.scheduler.grace_period, spec.scheduler.reduction_factor, max_t) if r < max_t]
    rows = []
    for rung in rungs:
        values = {
            t.run_id: h[metric]
            for t in record.trials
            for h in t.history
            if h[M.EPOCH] == rung and h.get(metric) is not None
        }
        stopped = [t for t in record.trials if t.status == str(Status.STOPPED_EARLY) and t.stopped_at == rung]
        cutoff = _quantile(sorted(values.values()), 1 / spec.scheduler.reduction_factor) if values else None
        if cutoff is not None and not metric.endswith("error"):
            cutoff = Number(cutoff)  # a loss: shown as it is, not in %
        rows.append([rung, len(values), cutoff, len(stopped), ", ".join(t.name for t in stopped) or "–"])
    unit = " %" if metric.endswith("error") else ""
    table = Table(
        "asha",
        ["rung (epoch)", "trials reached", f"cut-off {metric}{unit}", "stopped here", "who"],
        rows,
        f"ASHA keeps the best 1/{format_value(spec.scheduler.reduction_factor)} at each rung; the cut-off shown "
        f"is that quantile over every trial that reached the rung (ASHA decides as results arrive, over "
        f"those recorded so far, so an early trial may have passed a stricter or looser bar).",
    )
    report.h2("Early stopping: ASHA's rungs")
    report.add(table)
    spent = sum(t.epochs for t in record.trials)
    grid = int(record.plan.get("num_trials") or len(record.trials)) * epochs_per_trial
    if grid:
        report.p(f"Epochs trained: **{spent}** of the full grid's {grid} ({spent / grid:.0%}).")
    tables["asha"] = table


def _quantile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, as ASHA computes its cut-off."""
    pos = q * (len(values) - 1)
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def add_trials(report: Report, record: SweepRecord, stopped_by: str, tables: dict) -> None:
    """Every trial, finished or not, in the table `run` prints at its end; a failed one's error below."""
    rows = []
    for t in record.trials:
        row = trial_table.row(t.name, describe_status(t.status, t.epochs, stopped_by), t.epochs, t.history)
        rows.append(
            [
                t.name,
                row["status"],
                t.epochs,
                row.get("best_epoch"),
                row.get("train_error"),
                row.get("val_error"),
                row.get("test_error"),
            ]
        )
    table = Table(
        "trials",
        ["trial", "status", "epochs", "best epoch", "train err %", "val err %", "test err %"],
        rows,
        trial_table.NOTE,
    )
    report.h2("Trials")
    report.add(table)
    for t in record.trials:
        if t.error:
            report.p(f"`{t.name}` ({t.status}): {t.error} (the whole trace: artifact error.txt of its run)")
    tables["trials"] = table
