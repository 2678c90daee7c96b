"""`resnet-sweep report`: the papers' tables and figures for one sweep, read back from MLflow.

Table 6 (error by depth, plain and residual, with the paper's numbers where the recipe is the
paper's), Fig. 6 (training curves), Fig. 7 (layer responses), Table 3 (shortcut options A/B/C),
original vs pre-activation blocks (2016), any other varied setting, accuracy against cost (Pareto
fronts), Optuna's importances, a random or Optuna search's parallel coordinates, ASHA's rungs,
the seeds' spread, what the sweep shows against each claim of the papers, and how it was made.
Written as index.md (with PNG and CSV files beside it) and one self-contained report.html, and
logged on the sweep's parent run. Nothing here reads the Tune folder: a report can be made from any
machine that reaches the tracking server.

This module holds the entry points; beside it: document.py (the blocks and their rendering),
nets.py (labels and groups), paper.py (the papers' numbers and recipes), sections.py, cost.py,
parallel.py, seeds.py, claims.py and environment.py.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.report.claims import claims_table
from orchestrator.report.cost import add_pareto
from orchestrator.report.document import Figure, Report, Table
from orchestrator.report.environment import add_environment, read_environment
from orchestrator.report.nets import BLOCK, DEPTH, RESIDUAL, SHORTCUT, by_net, short_name, varying_keys
from orchestrator.report.parallel import add_parallel_coordinates, shows_parallel_coordinates
from orchestrator.report.sections import (
    add_asha,
    add_figure6,
    add_figure7,
    add_optuna,
    add_pivot,
    add_table6,
    add_ten_crop,
    add_trials,
)
from orchestrator.report.seeds import add_seeds
from orchestrator.tracking.records import SweepRecord
from orchestrator.vocabulary import REPORT_FOLDER

__all__ = ["STALE", "build_report", "report_sweep", "write_report"]


def build_report(record: SweepRecord, environment: dict | None = None) -> tuple[Report, dict[str, Table]]:
    """The report of a sweep read back from MLflow, and its tables by CSV slug: the sections its
    sweep file and trials call for, in the papers' order, with the claims after the summary, and
    how the sweep was made last (``environment``: its parent run's record, None when it has none)."""
    from orchestrator.sweepfile.calibration import duration
    from orchestrator.sweepfile.spec import parse_spec

    parsed = parse_spec(record.spec_text, source="sweep.yaml")
    spec = parsed.spec
    metric = spec.metric.name
    report = Report(f"{record.name}: {spec.description or 'sweep report'}")
    trials = record.trials
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    planned = int(record.plan.get("num_trials") or len(trials))
    first = trials[0].config if trials else {}
    report.p(
        f"Sweep **{record.name}** (MLflow experiment `{record.experiment}`), {record.status or 'running'}: "
        f"{len(trials)} of {planned} planned trials in MLflow ("
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + "). "
        f"Data set {first.get('dataset.name', '?')}; the epoch of each trial is the one with the lowest val "
        f"error, never chosen on the test set (the sweep's search and early stopping use {metric}). Errors are in %."
    )
    if retired := record.retired_line():
        report.p(retired + ".")
    if record.predicted_wall_s and record.wall_s is not None:
        report.p(
            f"Wall time of `run`: predicted {duration(record.predicted_wall_s)} from the rates `plan --calibrate` "
            f"measured, took {duration(record.wall_s)} (its start to its report; "
            f"{record.wall_s / record.predicted_wall_s - 1:+.0%})."
        )
    tables: dict[str, Table] = {}
    varying = varying_keys(trials)
    groups = by_net(trials, varying)
    claims_at = len(report.blocks)
    add_table6(report, groups, varying, tables)
    add_ten_crop(report, groups, tables)
    add_figure6(report, groups)
    add_figure7(report, groups, tables)
    residual = [t for t in trials if t.config.get(RESIDUAL, True)]
    if SHORTCUT in varying_keys(residual):
        add_pivot(
            report,
            residual,
            varying_keys(residual),
            SHORTCUT,
            "Table 3: shortcut options A/B/C",
            "shortcuts",
            tables,
            "A: identity with zero-padding; B: projections where the shape changes; C: projections everywhere "
            "(2015 §3.3).",
        )
    if BLOCK in varying:
        add_pivot(
            report,
            trials,
            varying,
            BLOCK,
            "Original vs pre-activation blocks (2016)",
            "blocks",
            tables,
        )
    for key in varying:
        if key not in (DEPTH, RESIDUAL, SHORTCUT, BLOCK, "model.n") and spec.search.algorithm != "optuna":
            add_pivot(
                report,
                trials,
                varying,
                key,
                f"Test error by {key}",
                f"by_{short_name(key)}",
                tables,
            )
    add_pareto(report, trials, tables)
    if spec.search.algorithm == "optuna":
        add_optuna(report, record, parsed, metric, tables)
    if shows_parallel_coordinates(spec):
        add_parallel_coordinates(report, record, spec, metric)
    if spec.scheduler.name == "asha":
        add_asha(report, record, spec, metric, tables)
    add_seeds(report, trials, tables)
    add_trials(report, record, "ASHA" if spec.scheduler.name == "asha" else "budget", tables)
    add_environment(report, environment, tables)
    claims = claims_table(trials, varying)
    tables["claims"] = claims
    report.blocks[claims_at:claims_at] = [("h2", "What this sweep shows"), claims]
    return report, tables


# Every file a report may hold besides index.md and report.html (by_KEY.csv aside).
STALE = {
    "fig6.png",
    "fig7.png",
    "table6.csv",
    "ten_crop.csv",
    "fig7.csv",
    "shortcuts.csv",
    "blocks.csv",
    "importance.csv",
    "asha.csv",
    "trials.csv",
    "claims.csv",
    "environment.csv",
    "pareto.png",
    "pareto.csv",
    "parallel_coordinates.png",
    "seeds.csv",
}


def write_report(record: SweepRecord, out: Path, environment: dict | None = None) -> list[Path]:
    """index.md, report.html, the figures and a CSV per table in ``out``; the files written."""
    report, tables = build_report(record, environment)
    out.mkdir(parents=True, exist_ok=True)
    files = {"index.md": report.markdown().encode(), "report.html": report.html().encode()}
    files.update({f"{slug}.csv": t.csv_text().encode() for slug, t in tables.items()})
    files.update({b.file: b.png for b in report.blocks if isinstance(b, Figure)})
    for name, data in files.items():
        (out / name).write_bytes(data)
    for old in out.iterdir():  # a section an earlier report had and this one has not (MLflow keeps its copy)
        if (
            old.name not in files
            and (old.name in STALE or old.name.startswith("by_"))
            and old.suffix in (".csv", ".png")
        ):
            old.unlink()
    return [out / name for name in files]


def report_sweep(tracking_uri: str | None, name: str, *, out: str | None = None, experiment: str | None = None) -> Path:
    """Reads the sweep ``name`` from MLflow, writes its report (default ./reports/NAME) and logs
    the files on the sweep's parent run (artifacts report/; a new report replaces them)."""
    from orchestrator.tracking.records import open_record

    client, record = open_record(tracking_uri, name, experiment)
    folder = Path(out).expanduser() if out else Path.cwd() / "reports" / record.name
    try:
        written = write_report(record, folder, read_environment(client, record.parent_id))
    except OSError as err:
        raise OSError(f"cannot write the report in {folder}: {err.strerror or err}") from None
    for path in written:
        client.log_artifact(record.parent_id, str(path), REPORT_FOLDER)
    return folder
