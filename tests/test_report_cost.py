"""The report's accuracy against cost: Pareto fronts of test error against parameters,
multiply-adds and measured training time, the parallel coordinates of a random or Optuna search,
and each repeated configuration's mean, std and 95% interval over seeds."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import statistics

import pytest

from orchestrator.report.cost import pareto_front, training_seconds
from orchestrator.report.document import Figure
from orchestrator.report.seeds import T975, interval95, t975
from orchestrator.tracking.records import SweepRecord, TrialRecord
from tests.support import cli

SPACES = {
    "grid": "algorithm: grid\n  space:\n    model.depth: [8, 14, 20]\n    train.lr: [0.05, 0.1]",
    "random": "algorithm: random\n  num_samples: 4\n  space:\n    model.depth: [8, 14, 20]\n"
    "    train.lr: {loguniform: [0.01, 0.5]}",
    "random, one key": "algorithm: random\n  num_samples: 4\n  space:\n    train.lr: {loguniform: [0.01, 0.5]}",
    "optuna": "algorithm: optuna\n  num_samples: 4\n  space:\n    model.depth: [8, 14, 20]\n"
    "    train.lr: {loguniform: [0.01, 0.5]}",
}
SPEC = """\
name: costs
dataset: {{name: digits, image_size: 8, train_limit: 256}}
model: {{arch: cifar, block: basic, shortcut: A}}
train: {{epochs: 2}}
search:
  {space}
"""


def _trial(name: str, depth: int, error: float, seconds: float, *, lr=0.1, seed=0, status="completed"):
    config = {
        "dataset.name": "digits",
        "dataset.image_size": 8,
        "dataset.train_limit": 256,
        "model.arch": "cifar",
        "model.block": "basic",
        "model.shortcut": "A",
        "model.depth": depth,
        "model.residual": True,
        "train.lr": lr,
        "train.seed": seed,
    }
    history = [
        {"epoch": e, "iteration": 4 * e, "train_error": error, "val_error": error, "test_error": error}
        | {"epoch_seconds": seconds / 2}
        for e in (1, 2)
    ]
    return TrialRecord(name, name, status, config, history=history)


def _record(trials: list[TrialRecord], space: str = "random") -> SweepRecord:
    spec = SPEC.format(space=SPACES[space])
    return SweepRecord("costs", "costs", "parent", "completed", spec, {"num_trials": len(trials)}, trials)


def _rows(csv_text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(csv_text)))


# A: the smallest net; B beats it at more cost; C is B's net with a higher error and more time
# (dominated on every cost); D is the biggest net, worse than A, but the quickest; E is the best
# and quickest of all but was stopped early (drawn, never on a front).
PROBE = [
    _trial("A", 8, 0.20, 1.0),
    _trial("B", 14, 0.15, 2.0),
    _trial("C", 14, 0.18, 3.0),
    _trial("D", 20, 0.25, 0.5),
    _trial("E", 8, 0.05, 0.1, status="stopped_early"),
]


@pytest.mark.unit
def test_pareto_front_keeps_only_the_non_dominated():
    points = [(1, 0.3), (2, 0.2), (2, 0.25), (3, 0.2), (4, 0.1), (0.5, 0.5), (4, 0.1), (5, 0.4)]
    # (2, .25) and (3, .2) lose to (2, .2); (5, .4) to all but (0.5, .5); equal points both stay
    assert pareto_front(points) == [5, 0, 1, 4, 6]
    assert pareto_front([]) == [] and pareto_front([(1.0, 0.1)]) == [0]


@pytest.mark.unit
def test_pareto_section_lists_each_costs_front_and_writes_the_figure(tmp_path):
    from orchestrator.report.report import write_report

    written = {p.name for p in write_report(_record(PROBE), tmp_path)}
    assert {"pareto.png", "pareto.csv", "parallel_coordinates.png"} <= written
    rows = _rows((tmp_path / "pareto.csv").read_text())
    fronts: dict[str, list[str]] = {}
    for row in rows:
        fronts.setdefault(row["cost"], []).append(row["trial"])
    assert fronts == {
        "parameters": ["A", "B"],
        "multiply-adds (one image, forward)": ["A", "B"],
        "training time (s), measured": ["D", "A", "B"],
    }
    rows = {r["trial"]: r for r in rows}
    assert rows["A"]["params"] == "75290" and float(rows["B"]["test err %"]) == pytest.approx(15.0)
    assert float(rows["D"]["training time (s), measured"]) == pytest.approx(0.5)
    assert int(rows["A"]["multiply-adds"]) < int(rows["B"]["multiply-adds"])
    assert (tmp_path / "pareto.png").read_bytes().startswith(b"\x89PNG")
    index = (tmp_path / "index.md").read_text()
    assert "## Accuracy against cost" in index and "](pareto.png)" in index and "[pareto.csv](pareto.csv)" in index
    assert "1 trial(s) stopped early" in index and "](parallel_coordinates.png)" in index
    page = (tmp_path / "report.html").read_text()
    pngs = [p for p in written if p.endswith(".png")]
    assert page.count('src="data:image/png;base64,') == len(pngs) and not re.search(r'src="(?!data:)', page)


@pytest.mark.unit
def test_training_time_is_the_sum_of_epoch_seconds():
    assert training_seconds(_trial("A", 8, 0.2, 3.0)) == pytest.approx(3.0)
    gap = _trial("A", 8, 0.2, 3.0)
    del gap.history[1]["epoch_seconds"]
    assert training_seconds(gap) is None  # part of a time is not the time
    assert training_seconds(TrialRecord("r", "r", "running", {})) is None


@pytest.mark.unit
@pytest.mark.parametrize(
    "space, shown", [("random", True), ("optuna", True), ("grid", False), ("random, one key", False)]
)
def test_parallel_coordinates_only_for_searches_of_two_keys_or_more(space, shown):
    from orchestrator.report.parallel import shows_parallel_coordinates
    from orchestrator.sweepfile.spec import parse_spec

    assert shows_parallel_coordinates(parse_spec(_record([], space).spec_text).spec) is shown


@pytest.mark.unit
def test_parallel_coordinates_axes():
    """Log for loguniform (its bounds at the ends), a tick per value of a list, the metric last."""
    from orchestrator.report.parallel import _axis

    label, ticks, place = _axis("train.lr", {"loguniform": [0.01, 1.0]}, [0.1])
    assert (
        label == "train.lr" and place(0.1) == pytest.approx(0.5) and ticks == [(0.0, "0.01"), (0.5, "0.1"), (1.0, "1")]
    )
    _, ticks, place = _axis("model.depth", [8, 14, 20], [14, 32])  # 32: seen, not in the file
    assert [t for _, t in ticks] == ["8", "14", "20", "32"] and place(14) == pytest.approx(1 / 3)
    _, ticks, place = _axis("train.weight_decay", {"uniform": [0.0, 0.001]}, [0.0005])
    assert place(0.0005) == pytest.approx(0.5) and ticks[0] == (0.0, "0") and ticks[-1] == (1.0, "0.001")


@pytest.mark.unit
def test_seed_intervals():
    # Three seeds of one configuration (10, 12, 14%) and two of another; one with one seed has no row.
    trials = [_trial(f"a{s}", 8, e, 1.0, seed=s) for s, e in enumerate((0.10, 0.12, 0.14))]
    trials += [_trial(f"b{s}", 14, e, 1.0, seed=s) for s, e in enumerate((0.20, 0.30))]
    trials += [_trial("c0", 20, 0.4, 1.0)]
    from orchestrator.report.report import build_report

    report, tables = build_report(_record(trials, "grid"))
    assert "pareto.png" in {b.file for b in report.blocks if isinstance(b, Figure)}
    assert "parallel_coordinates.png" not in {b.file for b in report.blocks if isinstance(b, Figure)}  # a grid
    rows = {r["configuration"]: r for r in _rows(tables["seeds"].csv_text())}
    assert set(rows) == {"ResNet-8", "ResNet-14"}
    a = rows["ResNet-8"]
    half = 4.3027 * 2.0 / math.sqrt(3)  # t(0.975, 2) · std / √n, in points of error
    assert (a["seeds"], a["n"]) == ("0, 1, 2", "3")
    got = [float(a[c]) for c in ("test err % mean", "std", "95% low", "95% high")]
    assert got == pytest.approx([12.0, 2.0, 12.0 - half, 12.0 + half])
    b = rows["ResNet-14"]  # 20% and 30%: std 5·√2, so t(0.975, 1) · std / √2 = 5 · 12.7062
    got = [float(b[c]) for c in ("test err % mean", "std", "95% low", "95% high")]
    assert got == pytest.approx([25.0, statistics.stdev([20, 30]), 25.0 - 5 * 12.7062, 25.0 + 5 * 12.7062])
    assert interval95([0.1, 0.1]) == (0.1, 0.0, 0.1, 0.1)


@pytest.mark.unit
def test_t_quantiles_are_students():
    stats = pytest.importorskip("scipy.stats")  # installed with scikit-learn; not a dependency of ours
    for df in (*range(1, len(T975) + 1), 31, 45, 100, 1000):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4), df


def test_quickstart_report_has_the_pareto_view(quickstart_sweep):
    """The grid sweep's report (written by `run`): the Pareto figure and table, no parallel
    coordinates (a grid), a measured time for every completed trial."""
    folder = quickstart_sweep.cwd / "reports" / "quickstart"
    index = (folder / "index.md").read_text()
    assert "](pareto.png)" in index and (folder / "pareto.png").is_file()
    assert "parallel_coordinates" not in index and not (folder / "parallel_coordinates.png").exists()
    rows = list(csv.DictReader((folder / "pareto.csv").open()))
    assert {r["cost"] for r in rows} == {
        "parameters",
        "multiply-adds (one image, forward)",
        "training time (s), measured",
    }
    assert all(float(r["training time (s), measured"]) > 0 for r in rows)


RANDOM = """\
name: searched
description: lr and depth drawn at random
dataset: {name: digits, image_size: 8, train_limit: 256}
model: {arch: cifar, block: basic, shortcut: A}
train: {epochs: 1, batch_size: 64}
search:
  algorithm: random
  num_samples: 6
  space:
    train.lr: {loguniform: [0.01, 0.5]}
    model.depth: [8, 14, 20]
resources: {cpu: 1}
"""


@pytest.mark.slow
def test_random_sweep_report_has_pareto_and_parallel_coordinates(tmp_path):
    """Must show 2: a random sweep with two searched keys; `report` writes the Pareto and
    parallel-coordinates figures and pareto.csv, its training times the sums MLflow holds."""
    from mlflow import MlflowClient

    from tests.support import child_runs

    (tmp_path / "searched.yaml").write_text(RANDOM)
    out = cli("run", "searched.yaml", "--no-report", cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    out = cli("report", "searched", "--out", "report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "report"
    index = (folder / "index.md").read_text()
    for name in ("pareto.png", "parallel_coordinates.png"):
        assert f"]({name})" in index and (folder / name).read_bytes().startswith(b"\x89PNG")
    assert "## Search: the searched settings against val_error" in index

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, children = child_runs(client, "searched")
    assert len(children) == 6
    measured = {}
    for run in children:
        seconds = client.get_metric_history(run.info.run_id, "epoch_seconds")
        test = client.get_metric_history(run.info.run_id, "test_error")
        measured[run.info.run_name] = (math.fsum(m.value for m in seconds), 100 * test[0].value)
    rows = [r for r in csv.DictReader((folder / "pareto.csv").open()) if r["cost"] == "training time (s), measured"]
    for r in rows:
        assert measured[r["trial"]] == pytest.approx((float(r["training time (s), measured"]), float(r["test err %"])))
    # the front, from MLflow's numbers: no trial is as quick and as good with one of the two strictly better
    for name, (time, error) in measured.items():
        beaten = any(t <= time and e <= error and (t, e) != (time, error) for t, e in measured.values())
        assert (name in {r["trial"] for r in rows}) is not beaten, name


@pytest.mark.unit
def test_the_summary_says_the_predicted_wall_time_against_what_run_took():
    from orchestrator.report.report import build_report

    trials = [_trial("a0", 8, 0.1, 1.0)]
    timed = dataclasses.replace(_record(trials, "grid"), predicted_wall_s=100.0, wall_s=85.0)
    assert "Wall time of `run`: predicted 100 s from the rates `plan --calibrate` measured, took 85 s" in (
        build_report(timed)[0].markdown()
    )
    assert "(its start to its report; -15%)" in build_report(timed)[0].markdown()
    # No prediction (no calibration, or the sweep grew since): no line.
    assert "Wall time" not in build_report(dataclasses.replace(timed, predicted_wall_s=None))[0].markdown()
