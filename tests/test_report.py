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

from orchestrator import cli as cli_main
from orchestrator.report import Stat, _quantile, _verdict, asha_rungs
from tests.conftest import cli
from tests.test_sweeps import child_runs

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
FILES = {"index.md", "report.html", "fig6.png", "fig7.png", "table6.csv", "fig7.csv", "trials.csv", "claims.csv"}


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
        trials[run.info.run_name] = {"best epoch": best.step, "val": 100 * best.value, "test": 100 * test[best.step],
                                     "train": 100 * train[-1][1], "status": run.data.tags["status"]}
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
            assert math.isclose(float(row[f"{family} {column} std"]), statistics.stdev(values), rel_tol=1e-9, abs_tol=1e-12)
    assert {r["net"]: r["params"] for r in _csv(folder / "table6.csv")} == {"8": "75290", "14": "172506"}


def _status(uri: str, cwd: Path) -> dict | None:
    """`resnet-sweep status reported --json`, in this process (a poll is then cheap); None until
    the sweep's parent run exists."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main.main(["status", "reported", "--tracking-uri", uri, "--json"])
    return json.loads(out.getvalue()) if code == 0 else None


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
        sweep = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", "sweep.yaml", "--tracking-uri",
                                  mlflow_server, "--no-report"], cwd=remote, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, **env})
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
    for file in FILES:
        assert (made["http"] / file).read_bytes() == (made["local"] / file).read_bytes(), file
    assert (local / "reports" / "reported" / "index.md").read_bytes() == (made["local"] / "index.md").read_bytes()

    client = MlflowClient(mlflow_server)
    _check_numbers(made["http"], client, "reported")
    parent = child_runs(client, "reported")[0][0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {f"report/{f}" for f in FILES}
    page = (made["http"] / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and not re.search(r'src="(?!data:)', page)
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
        scheduler = ASHAScheduler(time_attr="epoch", metric="val_error", mode="min", grace_period=grace,
                                  reduction_factor=factor, max_t=max_t)
        assert asha_rungs(grace, factor, max_t) == sorted(math.ceil(m) for m, _ in scheduler._brackets[0]._rungs)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_cutoff_quantile_is_numpys(n):
    values = sorted(np.random.default_rng(n).random(n).tolist())
    for factor in (2, 3, 4):
        # ASHA takes the (1 - 1/factor) percentile of negated errors: the 1/factor one of errors.
        assert math.isclose(_quantile(values, 1 / factor), -np.nanpercentile([-v for v in values], (1 - 1 / factor) * 100))


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
    return {"dataset.name": "digits", "dataset.image_size": 8, "model.arch": "cifar", "model.block": "basic",
            "model.shortcut": "A", "model.depth": depth, "model.residual": residual, "train.seed": 0, **more}


def _history(epochs: int, error: float) -> list[dict]:
    return [{"epoch": e, "iteration": 4 * e, "train_error": error, "val_error": error, "test_error": error,
             "val_loss": 2 * error} for e in range(1, epochs + 1)]


def test_report_survives_odd_sweeps():
    """Hand-made records of what a real store can hold: nothing yet, a trial without metrics, a
    failed one, params no build can read, Optuna trials that all scored the same, a loss metric."""
    from orchestrator.records import SweepRecord, TrialRecord
    from orchestrator.report import build_report

    def record(spec: str, trials: list, status: str = "running") -> SweepRecord:
        return SweepRecord("odd", "odd", "parent", status, spec, {"num_trials": 4, "epochs_per_trial": 4}, trials)

    def markdown(rec: SweepRecord) -> str:
        report, _ = build_report(rec)
        report.html()
        return report.markdown()

    assert "0 of 4 planned trials" in markdown(record(SWEEP, []))
    assert "## Trials" in markdown(record(SWEEP, [TrialRecord("r1", "plain8", "running", _config(8, False))]))
    failed = TrialRecord("r2", "resnet8", "failed", _config(8, True), history=_history(2, 0.5), error="ValueError: boom")
    text = markdown(record(SWEEP, [failed, TrialRecord("r3", "plain8", "completed", _config(8, False),
                                                       history=_history(4, 0.2))]))
    assert "`resnet8` (failed): ValueError: boom" in text
    assert "## Trials" in markdown(record(SWEEP, [TrialRecord("r4", "x", "completed", {"model.depth": "abc"},
                                                              history=_history(4, 0.2))]))
    same = [TrialRecord(f"o{i}", f"resnet8-lr{lr}", "completed", _config(8, True, **{"train.lr": lr}),
                        history=_history(4, 0.9)) for i, lr in enumerate((0.03, 0.1, 0.3))]
    text = markdown(record(SEARCH, same, status="completed"))
    assert "No importances: they need trials with at least two different values of val_loss" in text
    assert "| 1 | 3 | 1.800 |" in text  # the rung's cut-off is a loss: no %
    assert "| 9 |" not in text  # max_t ends trials; no rung there

