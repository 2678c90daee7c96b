"""Trial arrays in a sweep (resources.array) on real Ray and a real MLflow store: each
member is still a trial (its own child run, row, status), with the results of the same sweep
run without arrays; a member that diverges ends alone."""

from __future__ import annotations

import csv
import json
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from tests.support import child_runs, cli, kill_when_midway, migrated_store, table_rows

# Six trials of one shape: per seed, two learning rates that train and one that diverges in its
# first epoch; in plan order the arrays are (s0 0.05, s0 0.1, s0 1000, s1 0.05) and (s1 0.1, s1 1000).
SWEEP = """\
name: {name}
dataset: {{name: digits, image_size: 8, train_limit: 256}}
model: {{arch: cifar, block: basic, shortcut: A, depth: 8}}
train: {{epochs: 3, batch_size: 64}}
search:
  algorithm: grid
  space:
    train.seed: [0, 1]
    train.lr: [0.05, 0.1, 1000.0]
resources: {{cpu: 1{array}}}
"""
SEEDS_LRS = [(seed, lr) for seed in (0, 1) for lr in ("0.05", "0.1", "1000")]
NAMES = [f"resnet8-basic-A-lr{lr}-s{seed}" for seed, lr in SEEDS_LRS]
# Everything a trial logs per epoch but its speed (images/s, seconds).
EXACT = ("iteration", "train_loss", "train_error", "val_loss", "val_error", "test_error", "lr")


def _runs(client: MlflowClient, experiment: str, tmp_path: Path) -> dict[str, dict]:
    """Child run name → what the sweep logged for that trial."""
    _, children = child_runs(client, experiment)
    runs = {}
    for run in children:
        run_id = run.info.run_id
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        responses = None
        if "layer_responses.json" in artifacts:
            folder = tmp_path / "artifacts" / run_id
            folder.mkdir(parents=True)
            responses = json.loads(
                Path(client.download_artifacts(run_id, "layer_responses.json", str(folder))).read_text()
            )
        runs[run.info.run_name] = {
            "tags": run.data.tags,
            "params": run.data.params,
            "metrics": {
                key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in EXACT
            },
            "artifacts": artifacts,
            "responses": responses,
        }
    assert len(runs) == len(children), "one child run per trial, names unique"
    return runs


@pytest.fixture(scope="module")
def array_sweep(tmp_path_factory) -> SimpleNamespace:
    """`resnet-sweep run` of the sweep with arrays of 4, in a folder of its own (``cwd``; ``ran``:
    the finished command); its store is read by both tests below."""
    cwd = tmp_path_factory.mktemp("arrays")
    (cwd / "arrays.yaml").write_text(SWEEP.format(name="arrays-on", array=", array: 4"))
    migrated_store(cwd)
    return SimpleNamespace(cwd=cwd, ran=cli("run", "arrays.yaml", cwd=cwd))


def test_array_members_are_trials_each_with_its_own_results(array_sweep, tmp_path):
    """The short end-to-end check of arrays (the comparison with the sweep run without arrays is
    slow, below): the plan shows the arrays; each member has its own row, progress lines, status
    and MLflow child run holding its own config's results; `report` and `status` count members
    as trials."""
    cwd = array_sweep.cwd
    plan = cli("plan", "arrays.yaml", cwd=cwd)
    assert plan.returncode == 0, plan.stderr
    assert "arrays: 2 (4+2 members), each one Tune trial on one device" in plan.stdout, plan.stdout
    arrays = json.loads(cli("plan", "arrays.yaml", "--json", cwd=cwd).stdout)["arrays"]
    assert arrays == [NAMES[:4], NAMES[4:]]

    on = array_sweep.ran
    assert on.returncode == 0, on.stdout[-3000:] + on.stderr[-3000:]
    assert "6 trials in 2 arrays of up to 4" in on.stdout
    rows = table_rows(on.stdout)
    assert sorted(r.split()[0] for r in rows) == sorted(NAMES), on.stdout  # a row per member
    for name in NAMES:  # its own progress lines
        assert f"start     {name}" in on.stdout
        ended = "diverged" if "lr1000" in name else "completed"
        assert any(line.split("] ", 1)[-1].startswith(f"{ended:<9} {name}") for line in on.stdout.splitlines()), name

    members = _runs(MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}"), "arrays-on", tmp_path)
    assert set(members) == set(NAMES)
    for name, (seed, lr) in zip(NAMES, SEEDS_LRS, strict=True):
        member = members[name]
        assert (int(member["params"]["train.seed"]), float(member["params"]["train.lr"])) == (seed, float(lr)), name
        assert member["tags"]["speed"].endswith(" array=4" if name in arrays[0] else " array=2")
        if "lr1000" in name:
            assert member["tags"]["status"] == "diverged" and member["responses"] is None
        else:
            assert member["tags"]["status"] == "completed" and member["tags"]["best_epoch"]
            assert [step for step, _ in member["metrics"]["val_error"]] == [1, 2, 3]
            assert member["responses"] and {"learning_curve.png", "layer_responses.png"} <= member["artifacts"]
    trained = [m for name, m in members.items() if "lr1000" not in name]  # no two logged the same results:
    assert len({json.dumps(m["metrics"]["train_loss"]) for m in trained}) == len(trained)
    assert len({json.dumps(m["responses"]) for m in trained}) == len(trained)

    report = {r["trial"]: r["status"] for r in csv.DictReader((cwd / "reports" / "arrays-on" / "trials.csv").open())}
    assert report == {name: "diverged" if "lr1000" in name else "completed" for name in NAMES}
    status = cli("status", "arrays-on", "--json", cwd=cwd)
    assert status.returncode == 0, status.stderr
    standing = json.loads(status.stdout)
    assert (standing["planned"], standing["done"], standing["state"]) == (6, 6, "completed")
    assert {word: n for word, n in standing["counts"].items() if n} == {"completed": 4, "diverged": 2}


@pytest.mark.slow  # the short array sweep above keeps arrays end to end in the default suite
def test_array_sweep_gives_each_member_its_single_trials_results(array_sweep, tmp_path):
    """Must show 2 and 4: with arrays of 4, MLflow holds one child run per member whose every
    per-epoch metric equals the same trial's in the sweep without arrays (bitwise: fp32 on CPU, one
    thread per trial); the members that diverge are tagged diverged and end alone, the others
    complete. `sync` sees members as trials."""
    cwd = array_sweep.cwd
    assert array_sweep.ran.returncode == 0, array_sweep.ran.stdout[-3000:] + array_sweep.ran.stderr[-3000:]
    (cwd / "single.yaml").write_text(SWEEP.format(name="arrays-off", array=""))
    assert "arrays" not in json.loads(cli("plan", "single.yaml", "--json", cwd=cwd).stdout)
    off = cli("run", "single.yaml", "--no-report", cwd=cwd)
    assert off.returncode == 0, off.stdout[-3000:] + off.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    with_arrays, alone = _runs(client, "arrays-on", tmp_path), _runs(client, "arrays-off", tmp_path)
    assert set(with_arrays) == set(alone) == set(NAMES)
    for name in NAMES:
        member, single = with_arrays[name], alone[name]
        assert member["params"] == single["params"], name
        assert member["metrics"] == single["metrics"], name  # exactly: every epoch, every metric
        assert member["tags"]["status"] == single["tags"]["status"], name
        if "lr1000" not in name:
            assert member["tags"]["best_epoch"] == single["tags"]["best_epoch"]
            assert member["responses"] == single["responses"] and member["responses"]

    # `sync` rebuilds the members' runs from Tune's records alone.
    shutil.move(cwd / "mlflow.db", tmp_path / "before.db")
    synced = cli("sync", "arrays-on", cwd=cwd)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "arrays-on" in synced.stdout and "6 trials, 14 epochs" in synced.stdout, synced.stdout
    # (Read from elsewhere: this process's MLflow keeps the first store's file open under its old URI.)
    shutil.move(cwd / "mlflow.db", tmp_path / "synced.db")
    shutil.move(tmp_path / "before.db", cwd / "mlflow.db")  # the fixture's store as it was
    rebuilt = _runs(MlflowClient(f"sqlite:///{tmp_path / 'synced.db'}"), "arrays-on", tmp_path / "synced")
    assert set(rebuilt) == set(NAMES)
    for name in NAMES:
        assert rebuilt[name]["metrics"] == with_arrays[name]["metrics"]
        assert rebuilt[name]["tags"]["status"] == with_arrays[name]["tags"]["status"]


def test_array_spec_errors_name_the_field(tmp_path):
    optuna = SWEEP.format(name="x", array=", array: 4").replace(
        "algorithm: grid", "algorithm: optuna\n  num_samples: 4"
    )
    optuna = optuna.replace("train.lr: [0.05, 0.1, 1000.0]", "train.lr: {loguniform: [0.01, 0.3]}")
    for text, message in (
        (optuna, "Optuna draws one trial at a time"),
        (SWEEP.format(name="x", array=", array: 0"), "greater than or equal to 1"),
        (SWEEP.format(name="x", array=", array: 2.5"), "integer"),
    ):
        (tmp_path / "bad.yaml").write_text(text)
        out = cli("plan", "bad.yaml", cwd=tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "resources.array" in out.stderr and message in out.stderr, out.stderr


@pytest.mark.slow  # two more sweeps' worth of Ray start-ups; the fast suite has test_sweeps' Ctrl-C test
def test_array_sweep_interrupted_then_resumed(tmp_path):
    """Ctrl-C while the second array is midway: its unfinished member is `interrupted` in the
    table and MLflow, the members that ended (completed, diverged) stay as they are; `resume`
    continues the array from its checkpoint and each member's history is epochs 1…N once."""
    epochs = 8  # as test_sweeps' Ctrl-C test: the second array is still midway when the signal lands
    (tmp_path / "arrays.yaml").write_text(
        SWEEP.format(name="arrays-resume", array=", array: 4").replace("epochs: 3", f"epochs: {epochs}")
        + "max_concurrent: 1\n"
    )
    seen, done = kill_when_midway("run", "arrays.yaml", cwd=tmp_path, epochs=epochs, sig=signal.SIGINT)
    assert kill_when_midway.returncode == 130, seen[-3000:]
    assert done == {name for name in NAMES[:4] if "lr1000" not in name}, seen[-3000:]  # the first array
    rows = {r.split()[0]: r for r in table_rows(seen)}
    assert set(rows) == set(NAMES), seen[-3000:]
    assert " diverged " in rows[NAMES[5]] and " interrupted at epoch " in rows[NAMES[4]], seen[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = {r.info.run_name: r for r in child_runs(client, "arrays-resume")[1]}
    assert before[NAMES[4]].data.tags["status"] == "interrupted" and before[NAMES[5]].data.tags["status"] == "diverged"

    out = cli("resume", "arrays-resume", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(table_rows(out.stdout)) == 6
    assert f"start     {NAMES[5]}" not in out.stdout  # ended before its array: not started again
    parents, after = child_runs(client, "arrays-resume")
    assert len(parents) == 1 and len(after) == 6  # no duplicate child runs
    for run in after:
        name = run.info.run_name
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_error")]
        if "lr1000" in name:
            assert (run.data.tags["status"], steps) == ("diverged", []), name
        else:
            assert (run.data.tags["status"], steps) == ("completed", list(range(1, epochs + 1))), name
            if name in done:  # finished before the interruption: untouched
                assert run.info.end_time == before[name].info.end_time
