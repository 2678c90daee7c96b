"""`resnet-sweep compare A B`: did a change alter the results? Two sweeps read back from MLflow
alone (like `report`), their trials matched by configuration, and for each configuration the
test error in A and in B, the difference, and whether it is beyond noise by the report's own
rule (claims.difference_noise). Written as index.md, one self-contained compare.html and a CSV
per table (compare.csv: one row per configuration).

A configuration is the trial's values of the settings either sweep searched (the report's
varying keys): seeds are pooled as repeats of one configuration, and the settings fixed within
each sweep that differ between the two (B's 10× learning rate) are listed once, as what differs
between the sweeps, rather than making every configuration one sweep's alone."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from orchestrator.report.claims import ERROR_MARGIN, difference_noise, measured_images
from orchestrator.report.document import Report, Stat, Table
from orchestrator.report.environment import ENVIRONMENT_FILE, environment_rows, read_environment
from orchestrator.report.nets import SEED, best_test_errors, completed, format_value, net_order, varying_keys
from orchestrator.tracking.records import SweepRecord, TrialRecord
from resnet_core import metrics as M
from resnet_core.metrics import Status

__all__ = [
    "BETTER",
    "NOT_COMPARED",
    "ONLY_A",
    "ONLY_B",
    "SAME",
    "WHERE",
    "WORSE",
    "Comparison",
    "Configuration",
    "SweepsIncomparable",
    "compare",
    "compare_sweeps",
    "comparison_document",
    "write_comparison",
]

SAME, BETTER, WORSE = "no difference", "better in B", "worse in B"
ONLY_A, ONLY_B, NOT_COMPARED = "only in A", "only in B", "not compared"
# Settings that say where a run was, not what it ran: two runs of one recipe may differ in them.
WHERE = ("dataset.root", "dataset.cache_dir", "dataset.workers", "train.device")
# A side of a configuration with no completed trial but one of these did worse than one that completed.
ENDED_BADLY = {str(Status.DIVERGED), str(Status.FAILED), str(Status.OUT_OF_MEMORY)}
TEST_SPLIT = 2  # claims.measured_images: the test set
KEYS = (M.VAL_ERROR, M.TEST_ERROR)  # the histories the comparison reads: the best val epoch and its test error
TABLES = ("compare", "differences", "environment")  # the CSVs a comparison may write


class SweepsIncomparable(Exception):
    """The two sweeps measure different things (data set or metric): bad input, exit 2."""


@dataclass
class Configuration:
    """One configuration (the matching keys' values) with its trials in A and in B, and the verdict."""

    values: dict
    a: list[TrialRecord]
    b: list[TrialRecord]
    verdict: str
    difference: float | None = None  # mean B − mean A of the test error (a fraction)
    noise: float | None = None  # how large a difference must be to count


@dataclass
class Comparison:
    a: SweepRecord
    b: SweepRecord
    keys: list[str]  # the settings configurations are matched on
    differences: list[list[str]]  # [setting, A's value, B's value] of the fixed settings that differ
    configurations: list[Configuration]

    def count(self, verdict: str) -> int:
        return sum(c.verdict == verdict for c in self.configurations)

    @property
    def matched(self) -> int:
        return sum(c.verdict not in (ONLY_A, ONLY_B) for c in self.configurations)

    def summary(self) -> str:
        """One line: how many configurations matched and what they showed."""
        line = (
            f"{self.matched} configuration(s) in both: {self.count(SAME)} {SAME}, {self.count(WORSE)} {WORSE}, "
            f"{self.count(BETTER)} {BETTER}"
        )
        if self.count(NOT_COMPARED):
            line += f", {self.count(NOT_COMPARED)} {NOT_COMPARED} (no completed trial)"
        return line + f"; {self.count(ONLY_A)} {ONLY_A}, {self.count(ONLY_B)} {ONLY_B}"


def _check_comparable(a: SweepRecord, b: SweepRecord) -> None:
    """One data set and one metric, or the numbers mean different things."""
    from orchestrator.sweepfile.spec import parse_spec

    spec_a, spec_b = (parse_spec(r.spec_text, source="sweep.yaml").spec for r in (a, b))
    data_a, data_b = spec_a.dataset.get("name"), spec_b.dataset.get("name")
    if data_a != data_b:
        raise SweepsIncomparable(
            f"{a.name} ran on {data_a} and {b.name} on {data_b}: compare needs two sweeps on one data set"
        )
    metric_a, metric_b = (f"{s.metric.mode} {s.metric.name}" for s in (spec_a, spec_b))
    if metric_a != metric_b:
        raise SweepsIncomparable(
            f"{a.name} chose its epochs by {metric_a} and {b.name} by {metric_b}: compare needs two sweeps "
            f"with one metric"
        )


def _values(trials: list[TrialRecord], key: str) -> str:
    """A fixed setting's value in a sweep, as the report shows it ("–" where no trial has it)."""
    return ", ".join(sorted({format_value(t.config.get(key)) for t in trials})) or "–"


def _judge(a: list[TrialRecord], b: list[TrialRecord]) -> tuple[str, float | None, float | None]:
    """The verdict on one configuration's trials in A and B, with the difference and its noise:
    completed trials are compared (as in the report's claims); where one side has none, a side
    whose trials diverged or failed did worse than one that completed."""
    if not a or not b:
        return (ONLY_B if b else ONLY_A), None, None
    xa, xb = best_test_errors(completed(a)), best_test_errors(completed(b))
    if xa and xb:
        sizes = [n for n in (measured_images(a, TEST_SPLIT), measured_images(b, TEST_SPLIT)) if n]
        noise = difference_noise(xa, xb, ERROR_MARGIN, min(sizes, default=None))
        gap = statistics.fmean(xb) - statistics.fmean(xa)
        return (WORSE if gap > noise else BETTER if gap < -noise else SAME), gap, noise
    if xa and any(t.status in ENDED_BADLY for t in b):
        return WORSE, None, None
    if xb and any(t.status in ENDED_BADLY for t in a):
        return BETTER, None, None
    return NOT_COMPARED, None, None


def compare(a: SweepRecord, b: SweepRecord) -> Comparison:
    """Sweep B against sweep A, configuration by configuration. Raises SweepsIncomparable for two
    sweeps on different data sets or metrics."""
    _check_comparable(a, b)
    keys = [k for k in sorted(set(varying_keys(a.trials)) | set(varying_keys(b.trials))) if k not in WHERE]
    settings = sorted({k for t in a.trials + b.trials for k in t.config} - {*keys, SEED, *WHERE})
    values = [[key, _values(a.trials, key), _values(b.trials, key)] for key in settings]
    differences = [row for row in values if row[1] != row[2]]
    sides: dict[tuple, tuple[dict, list[TrialRecord], list[TrialRecord]]] = {}
    for side, record in enumerate((a, b)):
        for t in record.trials:
            match = tuple(repr(t.config.get(k)) for k in keys)
            sides.setdefault(match, ({k: t.config.get(k) for k in keys}, [], []))[1 + side].append(t)
    configurations = [
        Configuration(values, ta, tb, *_judge(ta, tb))
        for values, ta, tb in sorted(sides.values(), key=lambda s: net_order(s[0], keys))
    ]
    return Comparison(a, b, keys, differences, configurations)


def _not_completed(trials: list[TrialRecord]) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        if t.status != str(Status.COMPLETED):
            counts[t.status] = counts.get(t.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _seeds(record: SweepRecord) -> str:
    return ", ".join(sorted({format_value(t.config.get(SEED)) for t in record.trials})) or "none"


def _environment_table(a: dict | None, b: dict | None) -> Table:
    """The two environment records side by side, row by row (a missing record: "not recorded")."""
    rows_a, rows_b = (dict(environment_rows(r)) if r else {} for r in (a, b))
    labels = list(rows_a) + [label for label in rows_b if label not in rows_a]
    missing = f"not recorded (no {ENVIRONMENT_FILE})"
    rows = [
        [label, rows_a.get(label, "–" if a else missing), rows_b.get(label, "–" if b else missing)] for label in labels
    ]
    differ = [r[0] for r in rows if r[1] != r[2]]
    return Table(
        "environment",
        ["What", "A", "B"],
        rows,
        f"How each sweep was made ({ENVIRONMENT_FILE} on its parent run). "
        + (f"Different: {', '.join(differ)}." if differ else "The same in both."),
    )


def comparison_document(comparison: Comparison, env_a: dict | None, env_b: dict | None) -> tuple[Report, dict]:
    """The comparison as a document, and its tables by CSV slug (``env_a``/``env_b``: the sweeps'
    environment records, None where a sweep has none)."""
    a, b = comparison.a, comparison.b
    report = Report(f"{a.name} (A) vs {b.name} (B): did the results change?")
    for side, record in (("A", a), ("B", b)):
        report.p(
            f"{side}: sweep **{record.name}** (MLflow experiment `{record.experiment}`), "
            f"{record.status or 'running'}, {len(record.trials)} trials."
            + (f" {line}." if (line := record.retired_line()) else "")
        )
    first = next((t.config for t in a.trials + b.trials), {})
    report.p(
        f"Data set {first.get('dataset.name', '?')}. Compared: the test error at each trial's best val epoch (chosen "
        f"on val, never on the test set, as in the report), in %. Configurations are matched on the settings either "
        f"sweep searched ({', '.join(f'`{k}`' for k in comparison.keys) or 'none: one configuration each'}); seeds "
        f"are pooled as repeats of one configuration (A: seeds {_seeds(a)}; B: seeds {_seeds(b)})."
    )
    report.p(f"**{comparison.summary()}.**")
    tables: dict[str, Table] = {}

    report.h2("What differs between the two sweeps")
    where = ", ".join(f"`{k}`" for k in WHERE)
    if comparison.differences:
        tables["differences"] = Table(
            "differences",
            ["Setting", "A", "B"],
            comparison.differences,
            f"Settings fixed within each sweep whose values differ between them: every configuration below differs "
            f"in these too. Where the data and the runs were ({where}) is not compared.",
        )
        report.add(tables["differences"])
    else:
        report.p(
            f"Nothing but the seeds: every fixed setting is the same in both sweeps (where the data and the runs "
            f"were, {where}, is not compared)."
        )

    report.h2("By configuration")
    images = sorted({n for c in comparison.configurations if (n := measured_images(c.a + c.b, TEST_SPLIT))})
    measured = f"the {' or '.join(map(str, images))} test images" if images else "the test images"
    tables["compare"] = Table(
        "compare",
        [*comparison.keys, "A", "B", "difference", "noise", "verdict", "not completed"],
        [
            [
                *(format_value(c.values[k]) for k in comparison.keys),
                Stat.of(best_test_errors(completed(c.a))),
                Stat.of(best_test_errors(completed(c.b))),
                c.difference,
                c.noise,
                c.verdict,
                "; ".join(f"{side}: {text}" for side, ts in (("A", c.a), ("B", c.b)) if (text := _not_completed(ts)))
                or None,
            ]
            for c in comparison.configurations
        ],
        f"Test error (%) at the best val epoch: mean ± std over the completed trials (n); difference: B − A, in "
        f"points. By the rule of the report's claims, a difference counts when it is larger than the noise: "
        f"{100 * ERROR_MARGIN:g} points of error, or twice the difference's standard error (from the spread over "
        f"seeds, or from the binomial error of a rate measured on {measured}, whichever is larger). A "
        f"configuration whose trials in one sweep all diverged or failed, while the other's completed, did worse there.",
    )
    report.add(tables["compare"])

    report.h2("Environment")
    if env_a is None and env_b is None:
        report.p(
            f"Neither sweep's parent run has {ENVIRONMENT_FILE}: both were run by a version of resnet-sweep that did "
            f"not record its environment."
        )
    else:
        tables["environment"] = _environment_table(env_a, env_b)
        report.add(tables["environment"])
    return report, tables


def write_comparison(comparison: Comparison, out: Path, env_a: dict | None, env_b: dict | None) -> list[Path]:
    """index.md, compare.html and a CSV per table in ``out``; the files written."""
    report, tables = comparison_document(comparison, env_a, env_b)
    out.mkdir(parents=True, exist_ok=True)
    files = {"index.md": report.markdown(), "compare.html": report.html()}
    files.update({f"{slug}.csv": t.csv_text() for slug, t in tables.items()})
    for name, text in files.items():
        (out / name).write_text(text)
    for slug in TABLES:  # a table an earlier comparison in this folder had and this one has not
        if f"{slug}.csv" not in files:
            (out / f"{slug}.csv").unlink(missing_ok=True)
    return [out / name for name in files]


def compare_sweeps(tracking_uri: str | None, a_name: str, b_name: str, *, out: str | None = None) -> tuple:
    """Reads sweeps ``a_name`` and ``b_name`` from MLflow, compares B with A and writes the
    comparison (default ./compare/A-vs-B); (Comparison, folder). Raises as open_record does, and
    SweepsIncomparable."""
    from orchestrator.tracking.records import find_sweep, open_record, read_sweep

    client, a = open_record(tracking_uri, a_name, keys=KEYS, responses=False)
    parent, experiment = find_sweep(client, b_name)
    b = read_sweep(client, parent, experiment, keys=KEYS, responses=False)
    comparison = compare(a, b)
    folder = Path(out).expanduser() if out else Path.cwd() / "compare" / f"{a.name}-vs-{b.name}"
    envs = (read_environment(client, a.parent_id), read_environment(client, b.parent_id))
    try:
        write_comparison(comparison, folder, *envs)
    except OSError as err:
        raise OSError(f"cannot write the comparison in {folder}: {err.strerror or err}") from None
    return comparison, folder
