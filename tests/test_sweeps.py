"""Sweeps end to end on real Ray and real MLflow (SQLite file and HTTP server)."""

import csv
import json
import math
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.support import SMALL_GRID, SWEEPS, child_runs, cli, kill_when_midway, migrated_store, start, table_rows

UNSEEN = """\
name: unseen
description: grid-like categorical axes + Optuna over lr, ASHA
dataset: {name: digits, image_size: 8, train_limit: 384}
metric: {name: val_error, mode: min}
train: {epochs: 4, batch_size: 64}
search:
  algorithm: optuna
  num_samples: 8
  seed: 3
  space:
    model.n: [1, 2]
    model.block: [basic, bottleneck, preact-basic]
    model.shortcut: [A, B, C]
    model.residual: [true, false]
    train.lr: {loguniform: [0.01, 0.3]}
scheduler: {name: asha, grace_period: 1, reduction_factor: 3, max_t: 4}
resources: {cpu: 1}
"""


def test_unseen_sweep_optuna_asha_end_to_end(tmp_path):
    (tmp_path / "unseen.yaml").write_text(UNSEEN)
    migrated_store(tmp_path)
    out = cli("run", "unseen.yaml", cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = table_rows(out.stdout)
    assert len(rows) == 8, out.stdout  # every trial exactly once
    assert any("stopped by ASHA at epoch" in r for r in rows), out.stdout
    # Optuna did not serialise the trials (ray#46965): two started before the first ended.
    events = [
        line.split("] ", 1)[1].split()[0] for line in out.stdout.splitlines() if re.match(r"^\[\d\d:\d\d\] ", line)
    ]
    first_end = next(i for i, e in enumerate(events) if e in ("completed", "stopped", "diverged", "failed"))
    assert events[:first_end].count("start") >= 2, out.stdout

    parents, children = child_runs(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "unseen")
    assert len(parents) == 1 and len(children) == 8
    statuses = {c.data.tags["status"] for c in children}
    assert "stopped_early" in statuses and statuses <= {"completed", "stopped_early", "diverged"}
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert "model.depth" in c.data.params and "model.n" not in c.data.params  # resolved config
        if c.data.tags["status"] == "stopped_early":
            assert int(c.data.tags["stopped_at_epoch"]) < 4

    # The report `run` wrote: Optuna's importances and ASHA's rungs, as MLflow has them.
    report = tmp_path / "reports" / "unseen"
    importance = {
        r["hyperparameter"]: float(r["importance"]) for r in csv.DictReader((report / "importance.csv").open())
    }
    assert set(importance) == {"model.n", "model.block", "model.shortcut", "model.residual", "train.lr"}
    assert math.isclose(sum(importance.values()), 1.0, rel_tol=1e-6)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    epochs = {
        c.info.run_name: max(m.step for m in client.get_metric_history(c.info.run_id, "val_error")) for c in children
    }
    rungs = list(csv.DictReader((report / "asha.csv").open()))
    assert [int(r["rung (epoch)"]) for r in rungs] == [1, 3]  # grace 1, factor 3, max_t 4
    for r in rungs:
        rung = int(r["rung (epoch)"])
        assert int(r["trials reached"]) == sum(e >= rung for e in epochs.values())
        assert int(r["stopped here"]) == sum(c.data.tags.get("stopped_at_epoch") == str(rung) for c in children)
    index = (report / "index.md").read_text()
    assert "## Search: what mattered (Optuna)" in index and "## Early stopping: ASHA's rungs" in index
    assert re.search(r"Epochs trained: \*\*(\d+)\*\* of the full grid's 32", index).group(1) == str(
        sum(epochs.values())
    )

    # `resnet-sweep report` reads the same sweep back from MLflow alone and writes the same report.
    again = cli("report", "unseen", "--out", "again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    written = sorted(p.name for p in report.iterdir() if p.suffix in (".md", ".csv", ".json"))
    assert {"index.md", "importance.csv", "asha.csv"} <= set(written)
    for name in written:
        assert (tmp_path / "again" / name).read_text() == (report / name).read_text(), name


def _check_store(
    client: MlflowClient, experiment: str, trials: int, epochs: int, depths=frozenset({"8", "14"})
) -> None:
    parents, children = child_runs(client, experiment)
    assert len(parents) == 1 and len(children) == trials
    parent = parents[0]
    assert parent.data.tags["status"] == "completed" and "resnet_sweep.spec_hash" in parent.data.tags
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"sweep.yaml", "plan.json"}
    names = set()
    for child in children:
        names.add(child.info.run_name)
        assert child.data.tags["status"] == "completed" and child.data.tags["best_epoch"]
        assert child.data.params["model.depth"] in depths and "train.lr" in child.data.params
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_error")]
        assert steps == list(range(1, epochs + 1))
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"learning_curve.png", "layer_responses.json", "layer_responses.png"} <= artifacts
    assert len(names) == trials


def test_quickstart_store_has_one_parent_and_a_child_per_trial(quickstart_sweep):
    out = quickstart_sweep.ran
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(table_rows(out.stdout)) == 4
    _check_store(
        MlflowClient(f"sqlite:///{quickstart_sweep.cwd / 'mlflow.db'}"),
        "quickstart",
        trials=4,
        epochs=2,
        depths={"20", "32"},
    )


@pytest.mark.slow  # test_mlflow_faults.py's login test runs a sweep against a real server by default
def test_tracking_over_http_to_a_real_mlflow_server(tmp_path, mlflow_server):
    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=2))
    planned = json.loads(cli("plan", "small.yaml", "--json", cwd=tmp_path).stdout)
    out = cli("run", "small.yaml", "--tracking-uri", mlflow_server, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(table_rows(out.stdout)) == planned["num_trials"] == 4
    assert sorted(r.split()[0] for r in table_rows(out.stdout)) == sorted(t["name"] for t in planned["trials"])
    assert not (tmp_path / "mlflow.db").exists()  # everything went to the server
    _check_store(MlflowClient(mlflow_server), "small", trials=4, epochs=2)


def test_ctrl_c_midway_says_interrupted_everywhere_then_resume_finishes(tmp_path):
    """While `run` trains, a second driver on the same sweep (`resume`, or `run
    --resume-if-exists`) is refused: one line naming the live driver, exit 2, nothing started.
    Then Ctrl-C with trials finished and trials midway: exit 130; the sweep is released; the
    table and MLflow say `interrupted` (not completed, not stopped by a budget); our resume
    command is printed, not Ray's; the same command again with --resume-if-exists (what a retried
    Kubernetes job runs) then finishes the sweep, without duplicates. (SIGKILL, a crash, is
    covered by the S3, resume-if-exists and Kubernetes-entrypoint tests.)"""
    import socket

    epochs = 3
    # The test's fault hook (tests/faults) holds both depth-14 trials after their first epoch
    # while the depth-8 ones finish: a known state, however loaded the machine. It lets them go
    # with the Ctrl-C, as a training trial would be (Tune waits 10 s for a trial that never
    # reports again): each is stopped before its epoch 2 ends or after it (a checkpoint Tune's
    # state may lack), never at its last. (tests/test_checkpoints.py's slow tests interrupt
    # trials held in place, the first of those.)
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "14-0.1").write_text("hold")
    env = {"PYTHONPATH": str(Path(__file__).parent / "faults"), "RESNET_SWEEP_TEST_FAULTS": str(faults)}
    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=epochs) + "tracking: {log_best_checkpoint: true}\n")
    migrated_store(tmp_path)
    first = start("run", "small.yaml", "--resume-if-exists", cwd=tmp_path, env=env)
    lines, done, held = [], set(), set()
    for line in first.stdout:
        lines.append(line)
        if m := re.match(r"^\[\d\d:\d\d\] completed (\S+)", line):
            done.add(m.group(1))
        if m := re.match(r"^\[\d\d:\d\d\] epoch +1/\d+ +((resnet|plain)14-\S+)", line):
            held.add(m.group(1))
        if len(done) == len(held) == 2:
            break
    assert len(done) == len(held) == 2, "".join(lines)[-3000:]
    seconds = (["resume", "small"], ["run", "small.yaml", "--resume-if-exists"])
    with ThreadPoolExecutor(len(seconds)) as pool:  # both at once, while the trials are held
        outs = list(pool.map(lambda args: cli(*args, cwd=tmp_path, timeout=120), seconds))
    for args, out in zip(seconds, outs, strict=True):
        assert out.returncode == 2, (args, out.stdout[-2000:], out.stderr[-2000:])
        said = out.stderr.strip().splitlines()
        assert len(said) == 1 and said[0].startswith(
            f"error: sweep small is already being run by pid {first.pid} on {socket.gethostname()}"
        ), out.stderr
        assert "epoch" not in out.stdout
    first.send_signal(signal.SIGINT)
    (faults / "14-0.1").unlink()
    seen = "".join(lines) + first.communicate(timeout=300)[0]
    assert first.returncode == 130, seen[-3000:]
    assert not (tmp_path / "ray_results" / "small" / "driver.lock").exists()  # released
    # Finished: before Ctrl-C, or while it reached the trials (a trial at its last epoch may end).
    done = set(re.findall(r"^\[\d\d:\d\d\] completed (\S+)", seen, re.M))
    rows = table_rows(seen)
    # A trial Tune had not created yet when Ctrl-C came (2 run at a time) is counted, not listed.
    not_run = re.search(r"^(\d+) of 4 planned trials did not run$", seen, re.M)
    assert len(rows) + (int(not_run.group(1)) if not_run else 0) == 4, seen[-3000:]
    for row in rows:
        expected = " completed " if row.split()[0] in done else " interrupted at epoch "
        assert expected in row, (row, done)
    assert f"continue the sweep with `resnet-sweep resume {tmp_path / 'ray_results' / 'small'}`" in seen
    assert "Tuner.restore" not in seen and "stopped by" not in seen
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,), before = child_runs(client, "small")
    assert (parent.data.tags["status"], parent.info.status) == ("interrupted", "KILLED")
    finished = {r.info.run_id: r for r in before if r.data.tags.get("status") == "completed"}
    assert finished and len(finished) == len(done) < 4, seen
    for run in before:
        if run.info.run_id not in finished:
            assert (run.data.tags["status"], run.info.status) == ("interrupted", "KILLED"), run.info.run_name

    out = cli("run", "small.yaml", "--resume-if-exists", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(table_rows(out.stdout)) == 4
    parents, after = child_runs(client, "small")
    assert len(parents) == 1 and len(after) == 4  # zero duplicate child runs
    for run in after:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_error")]
        assert steps == list(range(1, epochs + 1)), (run.info.run_name, steps)  # continuous, once each
        assert run.data.tags["status"] == "completed"
        # `resume` keeps tracking.log_best_checkpoint
        assert [a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")], run.info.run_name
        if run.info.run_id in finished:  # finished trials untouched
            assert run.info.end_time == finished[run.info.run_id].info.end_time
    (parent,), _ = child_runs(client, "small")
    assert (parent.data.tags["status"], parent.info.status) == ("completed", "FINISHED")


def test_cifar_sweep_without_the_data_fails_fast_with_the_data_error(tmp_path):
    empty = tmp_path / "no-data"
    # A dead proxy makes sure no download can succeed, wherever the test runs.
    env = {"RESNET_SWEEP_DATA": str(empty), "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    out = cli("run", SWEEPS / "cifar_depth.yaml", cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cifar-10-python.tar.gz" in out.stderr and str(empty) in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_trainable_never_imports_mlflow():
    code = "import sys, orchestrator.running.trainable; sys.exit('mlflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.slow  # budget.max_epochs' arithmetic: tests/test_spec.py and the plan's unit tests
def test_epoch_budget_stops_the_sweep_and_says_so(tmp_path):
    text = SMALL_GRID.format(epochs=2) + "max_concurrent: 1\nbudget: {max_epochs: 3}\n"
    (tmp_path / "small.yaml").write_text(text)
    out = cli("run", "small.yaml", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "planned trials did not run (budget.max_epochs reached)" in out.stdout
    assert len(table_rows(out.stdout)) < 4


@pytest.mark.slow  # long; the Ctrl-C test above refuses a second driver on a running sweep by default
def test_the_same_sweep_in_two_terminals_at_once_gets_two_folders(tmp_path):
    """A second terminal starting the same sweep never writes into the first one's folder."""
    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=1) + "max_concurrent: 1\n")
    exe = Path(sys.executable).parent / "resnet-sweep"
    procs = [
        subprocess.Popen(
            [str(exe), "run", "small.yaml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = sorted(re.search(r"results in (\S+?),", out).group(1) for out in outs)
    assert folders == [str(tmp_path / "ray_results" / "small"), str(tmp_path / "ray_results" / "small-2")]
    for out in outs:
        assert len(table_rows(out)) == 4


@pytest.mark.slow  # the Ctrl-C test above continues with --resume-if-exists in the fast suite
def test_run_resume_if_exists_continues_the_same_sweep_instead_of_a_second(tmp_path):
    """An entrypoint that runs twice (a Kubernetes job retried after its head pod was lost)."""
    epochs = 8
    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=epochs))
    seen, done = kill_when_midway("run", "small.yaml", "--resume-if-exists", cwd=tmp_path, epochs=epochs)
    assert done, seen

    out = cli("run", "small.yaml", "--resume-if-exists", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "small is already in" in out.stdout and len(table_rows(out.stdout)) == 4
    trained = {m.group(1) for m in re.finditer(r"^\[\d\d:\d\d\] epoch +\d+/\d+ +(\S+)", out.stdout, re.M)}
    assert trained and not trained & done, (trained, done)
    assert sorted(p.name for p in (tmp_path / "ray_results").iterdir()) == ["small"]  # no small-2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, children = child_runs(client, "small")
    assert len(parents) == 1 and len(children) == 4
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_error")] == list(range(1, epochs + 1))

    again = cli("run", "small.yaml", "--resume-if-exists", cwd=tmp_path, timeout=600)  # finished: nothing to do
    assert again.returncode == 0 and len(table_rows(again.stdout)) == 4, again.stderr[-3000:]
    assert not re.search(r"^\[\d\d:\d\d\] epoch", again.stdout, re.M), again.stdout
    assert len(child_runs(client, "small")[1]) == 4

    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=epochs + 1))  # another sweep, same name
    other = cli("run", "small.yaml", "--resume-if-exists", cwd=tmp_path)
    assert other.returncode == 2 and "another sweep named 'small'" in other.stderr, other.stderr
