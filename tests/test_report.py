"""`resnet-sweep report` and `status`: the paper's tables and figures from MLflow alone, the same
from a local store and from a real MLflow server over HTTP, every number equal to MLflow's, and
the live standing of a running sweep."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from orchestrator import cli as cli_main
from orchestrator.report.claims import _verdict
from orchestrator.report.document import Stat
from orchestrator.report.sections import _quantile, asha_rungs
from tests.support import child_runs, cli

SWEEP = """\
name: reported
description: plain vs residual at 8 and 14 layers, two seeds
dataset: {name: digits, image_size: 8, train_limit: 256}
model: {arch: cifar, block: basic, shortcut: A}
train: {epochs: 3, batch_size: 64}
search:
  algorithm: grid
  space:
    model.depth: [8, 14]
    model.residual: [true, false]
  seeds: [0, 1]
resources: {cpu: 1}
"""
FILES = {
    "index.md",
    "report.html",
    "fig6.png",
    "fig7.png",
    "pareto.png",
    "table6.csv",
    "fig7.csv",
    "pareto.csv",
    "seeds.csv",
    "trials.csv",
    "claims.csv",
    "environment.csv",
}


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def _expected(client: MlflowClient, experiment: str) -> tuple[dict, dict]:
    """Per trial and per (depth, residual): the numbers the report must show, computed here from
    MLflow's client directly (not through the report's code)."""
    _, children = child_runs(client, experiment)
    trials, nets = {}, {}
    for run in children:
        val = client.get_metric_history(run.info.run_id, "val_error")
        test = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_error")}
        train = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_error"))
        best = min(val, key=lambda m: (m.value, m.step))
        trials[run.info.run_name] = {
            "best epoch": best.step,
            "val": 100 * best.value,
            "test": 100 * test[best.step],
            "train": 100 * train[-1][1],
            "status": run.data.tags["status"],
        }
        key = (run.data.params["model.depth"], run.data.params["model.residual"])
        nets.setdefault(key, []).append(trials[run.info.run_name])
    return trials, nets


def _check_numbers(folder: Path, client: MlflowClient, experiment: str) -> None:
    trials, nets = _expected(client, experiment)
    rows = {r["trial"]: r for r in _csv(folder / "trials.csv")}
    assert set(rows) == set(trials)
    for name, want in trials.items():
        row = rows[name]
        assert row["status"] == want["status"] == "completed"
        assert int(row["best epoch"]) == want["best epoch"]
        for column, key in (("train err %", "train"), ("val err %", "val"), ("test err %", "test")):
            assert math.isclose(float(row[column]), want[key], rel_tol=1e-12), (name, column)
    table6 = {r["net"]: r for r in _csv(folder / "table6.csv")}
    assert set(table6) == {"8", "14"}
    for (depth, residual), runs in nets.items():
        family = "residual" if residual == "True" else "plain"
        row = table6[depth]
        for column, key in (("test err %", "test"), ("train err %", "train")):
            values = [r[key] for r in runs]
            assert int(row[f"{family} {column} n"]) == len(values) == 2
            assert math.isclose(float(row[f"{family} {column} mean"]), statistics.fmean(values), rel_tol=1e-12)
            assert math.isclose(
                float(row[f"{family} {column} std"]), statistics.stdev(values), rel_tol=1e-9, abs_tol=1e-12
            )
    assert {r["net"]: r["params"] for r in _csv(folder / "table6.csv")} == {"8": "75290", "14": "172506"}


MEASURED_TIMES = {"pareto.csv", "pareto.png", "report.html"}  # report.html holds pareto.png


def _without_times(path: Path) -> bytes:
    """The file, and for index.md without its Pareto section (measured training times)."""
    data = path.read_bytes()
    if path.name != "index.md":
        return data
    head, _, rest = data.partition(b"](pareto.png)")
    return head + rest.partition(b"([pareto.csv](pareto.csv))")[2]


def _status(uri: str, cwd: Path) -> dict | None:
    """`resnet-sweep status reported --json`, in this process (a poll is then cheap); None until
    the sweep's parent run exists."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main.main(["status", "reported", "--tracking-uri", uri, "--json"])
    return json.loads(out.getvalue()) if code == 0 else None


@pytest.mark.slow  # tests/test_sweeps.py runs `report` on a finished sweep in the default suite
def test_report_local_and_http_identical_and_equal_to_mlflow(tmp_path, mlflow_server, monkeypatch):
    """Must show 1, 2 and 5: the same sweep tracked in a local store and on a real MLflow server;
    reports made elsewhere are byte-identical, equal MLflow's numbers, and `status` polled from
    another folder while the sweep runs adds up to the plan and gives an ETA."""
    local, remote, elsewhere = tmp_path / "local", tmp_path / "on server", tmp_path / "elsewhere"
    for folder in (local, remote, elsewhere):
        folder.mkdir()
        (folder / "sweep.yaml").write_text(SWEEP)
    out = cli("run", "sweep.yaml", cwd=local, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "report: " in out.stdout and (local / "reports" / "reported" / "index.md").is_file()

    env = {"RESNET_SWEEP_SUMMARY_S": "3"}
    with (remote / "run.log").open("w") as log:
        sweep = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "run",
                "sweep.yaml",
                "--tracking-uri",
                mlflow_server,
                "--no-report",
            ],
            cwd=remote,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
        monkeypatch.chdir(elsewhere)
        polls = []
        while sweep.poll() is None:
            if (now := _status(mlflow_server, elsewhere)) is not None:
                polls.append(now)
            time.sleep(1)
    assert sweep.returncode == 0, (remote / "run.log").read_text()[-3000:]
    running = [p for p in polls if p["state"] == "running"]
    assert running, polls
    for p in running:  # every count in its place: completed + running + pending + … = the plan
        assert sum(p["counts"].values()) == p["planned"] == 8, p
        assert p["epochs_planned"] == 24 and 0 <= p["epochs_done"] <= 24
    assert any(p["eta_s"] is not None and p["eta_s"] > 0 and p["counts"].get("running") for p in running), running
    log = (remote / "run.log").read_text()
    assert re.search(r"\] sweep +\d+/8 trials done.*; \d+/24 epochs; .*ETA", log), log[-3000:]
    assert not (remote / "reports").exists()  # --no-report

    final = _status(mlflow_server, elsewhere)
    assert final["state"] == "completed" and final["counts"]["completed"] == 8 and final["eta_s"] == 0

    made = {}
    for name, uri in (("http", mlflow_server), ("local", f"sqlite:///{local / 'mlflow.db'}")):
        out = cli("report", "reported", "--tracking-uri", uri, "--out", f"out {name}", cwd=elsewhere)
        assert out.returncode == 0, out.stderr
        made[name] = elsewhere / f"out {name}"
        assert {p.name for p in made[name].iterdir()} == FILES
    # Two runs of one sweep: the same numbers, but each trial's training time is its own run's
    # (the Pareto view's time axis), so those are compared without it.
    for file in FILES - MEASURED_TIMES:
        assert _without_times(made["http"] / file) == _without_times(made["local"] / file), file
    assert (local / "reports" / "reported" / "index.md").read_bytes() == (made["local"] / "index.md").read_bytes()

    client = MlflowClient(mlflow_server)
    _check_numbers(made["http"], client, "reported")
    parent = child_runs(client, "reported")[0][0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {f"report/{f}" for f in FILES}
    page = (made["http"] / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == sum(f.endswith(".png") for f in FILES) and not re.search(
        r'src="(?!data:)', page
    )
    index = (made["http"] / "index.md").read_text()
    for section in ("What this sweep shows", "Table 6", "Figure 6", "Figure 7", "Trials"):
        assert f"## {section}" in index


def test_report_and_status_say_what_is_missing(tmp_path):
    out = cli("report", "nothing", cwd=tmp_path)
    assert out.returncode == 2 and "no MLflow store at" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store
    out = cli("status", "nothing", "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)
    assert out.returncode == 1 and "no MLflow server answers" in out.stderr
    out = cli("status", "nothing", "--tracking-uri", "ftp://x", cwd=tmp_path)
    assert out.returncode == 2 and "--tracking-uri" in out.stderr


def test_asha_rungs_are_rays():
    from ray.tune.schedulers import ASHAScheduler

    for grace, factor, max_t in ((1, 3, 15), (1, 3, 9), (2, 2.5, 40), (4, 4, 182), (1, 2, 1)):
        scheduler = ASHAScheduler(
            time_attr="epoch", metric="val_error", mode="min", grace_period=grace, reduction_factor=factor, max_t=max_t
        )
        assert asha_rungs(grace, factor, max_t) == sorted(math.ceil(m) for m, _ in scheduler._brackets[0]._rungs)


@pytest.mark.unit
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_cutoff_quantile_is_numpys(n):
    values = sorted(np.random.default_rng(n).random(n).tolist())
    for factor in (2, 3, 4):
        # ASHA takes the (1 - 1/factor) percentile of negated errors: the 1/factor one of errors.
        assert math.isclose(
            _quantile(values, 1 / factor), -np.nanpercentile([-v for v in values], (1 - 1 / factor) * 100)
        )


@pytest.mark.unit
def test_statistics_and_verdicts():
    s = Stat.of([0.1, 0.12])
    assert (round(s.mean, 9), round(s.std, 9), s.n) == (11.0, round(statistics.stdev([10, 12]), 9), 2)
    assert str(Stat.of([0.0875])) == "8.75 (n=1)"
    assert _verdict([0.10], [0.20], 0.005) == "reproduced"
    assert _verdict([0.20], [0.10], 0.005) == "not reproduced"
    assert _verdict([0.100], [0.102], 0.005) == "not reproduced (difference within noise)"
    # one seed each on 359 test images: 2.23% vs 3.34% is 4 images, within the sampling noise
    assert _verdict([0.0223], [0.0334], 0.005, images=359) == "not reproduced (difference within noise)"
    assert _verdict([0.0223], [0.0334], 0.005, images=100_000) == "reproduced"
    # seeds that scatter more than the gap: within noise, whatever the means say
    assert _verdict([0.10, 0.20], [0.16, 0.26], 0.005) == "not reproduced (difference within noise)"


SEARCH = """\
name: odd
dataset: {name: digits, image_size: 8, train_limit: 256}
metric: {name: val_loss, mode: min}
model: {arch: cifar, depth: 8, block: basic, shortcut: A}
train: {epochs: 9}
search:
  algorithm: optuna
  num_samples: 4
  space:
    train.lr: {loguniform: [0.02, 0.4]}
scheduler: {name: asha, grace_period: 1, reduction_factor: 3, max_t: 9}
"""


def _config(depth: int, residual: bool, **more) -> dict:
    return {
        "dataset.name": "digits",
        "dataset.image_size": 8,
        "model.arch": "cifar",
        "model.block": "basic",
        "model.shortcut": "A",
        "model.depth": depth,
        "model.residual": residual,
        "train.seed": 0,
        **more,
    }


def _history(epochs: int, error: float) -> list[dict]:
    return [
        {
            "epoch": e,
            "iteration": 4 * e,
            "train_error": error,
            "val_error": error,
            "test_error": error,
            "val_loss": 2 * error,
        }
        for e in range(1, epochs + 1)
    ]


@pytest.mark.unit
def test_report_survives_odd_sweeps():
    """Hand-made records of what a real store can hold: nothing yet, a trial without metrics, a
    failed one, params no build can read, Optuna trials that all scored the same, a loss metric."""
    from orchestrator.report.report import build_report
    from orchestrator.tracking.records import SweepRecord, TrialRecord

    def record(spec: str, trials: list, status: str = "running") -> SweepRecord:
        return SweepRecord("odd", "odd", "parent", status, spec, {"num_trials": 4, "epochs_per_trial": 4}, trials)

    def markdown(rec: SweepRecord) -> str:
        report, _ = build_report(rec)
        report.html()
        return report.markdown()

    assert "0 of 4 planned trials" in markdown(record(SWEEP, []))
    assert "## Trials" in markdown(record(SWEEP, [TrialRecord("r1", "plain8", "running", _config(8, False))]))
    failed = TrialRecord(
        "r2", "resnet8", "failed", _config(8, True), history=_history(2, 0.5), error="ValueError: boom"
    )
    text = markdown(
        record(SWEEP, [failed, TrialRecord("r3", "plain8", "completed", _config(8, False), history=_history(4, 0.2))])
    )
    assert "`resnet8` (failed): ValueError: boom" in text
    assert "## Trials" in markdown(
        record(SWEEP, [TrialRecord("r4", "x", "completed", {"model.depth": "abc"}, history=_history(4, 0.2))])
    )
    same = [
        TrialRecord(
            f"o{i}", f"resnet8-lr{lr}", "completed", _config(8, True, **{"train.lr": lr}), history=_history(4, 0.9)
        )
        for i, lr in enumerate((0.03, 0.1, 0.3))
    ]
    text = markdown(record(SEARCH, same, status="completed"))
    assert "No importances: they need trials with at least two different values of val_loss" in text
    assert "| 1 | 3 | 1.800 |" in text  # the rung's cut-off is a loss: no %
    assert "| 9 |" not in text  # max_t ends trials; no rung there


def _records_of(sweep: str, final: dict | None = None, change: dict | None = None) -> list:
    """Completed trials of a shipped sweep's plan, their configs as MLflow gives them back (params
    are text: lists, not tuples), with 3 epochs at 30% error and ``final`` metrics."""
    from orchestrator.sweepfile.plan import make_plan
    from orchestrator.sweepfile.spec import parse_spec
    from orchestrator.tracking.records import TrialRecord, _typed
    from tests.support import SWEEPS

    plan = make_plan(parse_spec((SWEEPS / sweep).read_text()), with_models=False)
    return [
        TrialRecord(
            f"r{t.index}",
            t.name,
            "completed",
            {k: _typed(str(v)) for k, v in {**t.config, **(change or {})}.items()},
            history=_history(3, 0.3),
            final=dict(final or {}),
        )
        for t in plan.trials
    ]


def _report_of(sweep: str, trials: list) -> tuple[str, dict]:
    from orchestrator.report.report import build_report
    from orchestrator.tracking.records import SweepRecord
    from tests.support import SWEEPS

    record = SweepRecord(
        "s",
        "s",
        "parent",
        "completed",
        (SWEEPS / sweep).read_text(),
        {"num_trials": len(trials), "epochs_per_trial": 3},
        trials,
    )
    report, tables = build_report(record)
    return report.markdown(), tables


@pytest.mark.unit
def test_imagenet_10crop_errors_beside_the_papers_tables_2_and_3():
    """The final model's 10-crop errors (MLflow's test_error_10crop / test_top5_error_10crop) per net,
    with 2015 Table 2 / Table 3's numbers where the trials used the paper's ImageNet recipe."""
    final = {"test_error_10crop": 0.26, "test_top5_error_10crop": 0.081}
    paper = {
        "plain_vs_residual": {
            "plain-18": (27.94, None),
            "plain-34": (28.54, 10.02),
            "ResNet-18": (27.88, None),
            "ResNet-34": (25.03, 7.76),
        },
        "shortcuts": {"ResNet-34 (A)": (25.03, 7.76), "ResNet-34 (B)": (24.52, 7.46), "ResNet-34 (C)": (24.19, 7.40)},
        "depth": {
            "ResNet-50 bottleneck": (22.85, 6.71),
            "ResNet-101 bottleneck": (21.75, 6.05),
            "ResNet-152 bottleneck": (21.43, 5.71),
        },
    }
    for name, want in paper.items():
        markdown, tables = _report_of(f"imagenet_{name}.yaml", _records_of(f"imagenet_{name}.yaml", final))
        rows = {r["net"]: r for r in csv.DictReader(io.StringIO(tables["ten_crop"].csv_text()))}
        assert {
            net: tuple(float(r[c]) if r[c] else None for c in ("paper top-1 %", "paper top-5 %"))
            for net, r in rows.items()
        } == want
        for r in rows.values():
            assert (float(r["top-1 10-crop err % mean"]), float(r["top-5 10-crop err % mean"])) == pytest.approx(
                (26.0, 8.1)
            )
            assert float(r["top-1 centre-crop err % mean"]) == pytest.approx(30.0) and r["top-1 10-crop err % n"] == "1"
        assert "## 10-crop test error (2015 Tables 2 and 3)" in markdown and "left out" not in markdown
        assert "the paper's ImageNet errors are 10-crop, beside ours in the next table" in markdown
    markdown, _ = _report_of("imagenet_shortcuts.yaml", _records_of("imagenet_shortcuts.yaml", final))
    assert "| ResNet-34 (B) | 21.80M | 26.00 (n=1) | 8.10 (n=1) | 30.00 (n=1) | 24.52 | 7.46 |" in markdown


@pytest.mark.unit
@pytest.mark.parametrize(
    "change, named",
    [
        ({"train.batch_size": 128}, "batch_size 128"),
        ({"train.epochs": 30}, "30 epochs (under 90)"),
        ({"dataset.scale_range": [224, 256]}, "scale_range [224, 256]"),
        ({"dataset.name": "imagefolder"}, "data set imagefolder"),
    ],
)
def test_imagenet_paper_columns_only_for_the_papers_recipe(change, named):
    final = {"test_error_10crop": 0.26, "test_top5_error_10crop": 0.081}
    markdown, tables = _report_of("imagenet_depth.yaml", _records_of("imagenet_depth.yaml", final, change))
    rows = list(csv.DictReader(io.StringIO(tables["ten_crop"].csv_text())))
    assert len(rows) == 3 and all(r["paper top-1 %"] == r["paper top-5 %"] == "" for r in rows)
    assert all(float(r["top-1 10-crop err % mean"]) == pytest.approx(26.0) for r in rows)  # ours stay
    assert "The paper's numbers are left out where the trials do not use its ImageNet recipe and model" in markdown
    assert named in markdown


@pytest.mark.unit
def test_imagenet_recipe_is_the_papers_model_too():
    from orchestrator.report.paper import imagenet_recipe_differences as _imagenet_recipe

    (config,) = [t.config for t in _records_of("imagenet_depth.yaml") if t.config["model.depth"] == 50]
    assert _imagenet_recipe(config) == []
    assert _imagenet_recipe({**config, "model.bottleneck_stride": "3x3"}) == [
        "bottleneck_stride 3x3"
    ]  # torchvision's v1.5
    assert _imagenet_recipe({**config, "model.block": "preact-bottleneck"}) == ["block preact-bottleneck"]
    assert _imagenet_recipe({**config, "train.epochs": None, "train.iterations": 600_000}) == []  # the paper's 60×10^4


@pytest.mark.unit
def test_imagenet_trials_without_10crop_yet_and_cifar_sweeps_have_no_10crop_table():
    markdown, tables = _report_of("imagenet_depth.yaml", _records_of("imagenet_depth.yaml"))  # no final metrics yet
    rows = list(csv.DictReader(io.StringIO(tables["ten_crop"].csv_text())))
    assert [r["top-1 10-crop err %"] for r in rows] == ["", "", ""] and rows[0]["paper top-1 %"] == "22.85"
    markdown, tables = _report_of("cifar_depth.yaml", _records_of("cifar_depth.yaml"))
    assert "ten_crop" not in tables and "10-crop" not in markdown


@pytest.mark.unit
def test_cifar_paper_column_for_the_papers_recipe_as_mlflow_gives_it_back():
    """Milestones come back from MLflow as a list; the paper's errors are already in %."""
    markdown, tables = _report_of("cifar_depth.yaml", _records_of("cifar_depth.yaml"))
    paper = {r["net"]: r["paper test err %"] for r in csv.DictReader(io.StringIO(tables["table6"].csv_text()))}
    assert paper == {"20": "8.75", "32": "7.51", "44": "7.17", "56": "6.97", "110": "6.43"}
    assert "| 0.85M | 30.00 (n=1) | 30.00 (n=1) | 30.00 (n=1) | 30.00 (n=1) | 6.97 |" in markdown
    assert "left out" not in markdown


@pytest.mark.slow  # ≈ 15 s for a fresh SQLite store; the fast tests above give the report hand-made records
def test_report_reads_the_10crop_metrics_from_mlflow(tmp_path):
    """The report's 10-crop columns come from the trials' MLflow metrics (logged at the last
    epoch's step), read with the rest of the sweep."""
    from orchestrator.report.report import build_report
    from orchestrator.tracking.records import open_record
    from orchestrator.vocabulary import PARENT_TAG, TAG_ROLE, TAG_STATUS
    from tests.support import SWEEPS

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("imagenet-shortcuts")
    parent = client.create_run(
        experiment, run_name="imagenet-shortcuts", tags={TAG_ROLE: "sweep", TAG_STATUS: "completed"}
    )
    for name, text in (
        ("sweep.yaml", (SWEEPS / "imagenet_shortcuts.yaml").read_text()),
        ("plan.json", '{"num_trials": 1}'),
    ):
        (tmp_path / name).write_text(text)
        client.log_artifact(parent.info.run_id, str(tmp_path / name))
    (trial,) = [t for t in _records_of("imagenet_shortcuts.yaml") if t.config["model.shortcut"] == "B"]
    child = client.create_run(
        experiment, run_name=trial.name, tags={PARENT_TAG: parent.info.run_id, TAG_STATUS: "completed"}
    )
    client.log_batch(
        child.info.run_id,
        params=[Param(k, str(v)) for k, v in trial.config.items()],
        metrics=[Metric(key, value, 0, h["epoch"]) for h in trial.history for key, value in h.items() if key != "epoch"]
        + [Metric("test_error_10crop", 0.2461, 0, 3), Metric("test_top5_error_10crop", 0.0752, 0, 3)],
    )
    _, record = open_record(uri, "imagenet-shortcuts")
    assert record.trials[0].final == {"test_error_10crop": 0.2461, "test_top5_error_10crop": 0.0752}
    _, tables = build_report(record)
    (row,) = csv.DictReader(io.StringIO(tables["ten_crop"].csv_text()))
    assert (row["net"], row["paper top-1 %"], row["paper top-5 %"]) == ("ResNet-34", "24.52", "7.46")
    assert (float(row["top-1 10-crop err % mean"]), float(row["top-5 10-crop err % mean"])) == pytest.approx(
        (24.61, 7.52)
    )
