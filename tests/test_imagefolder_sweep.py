"""The acceptance sweep for image folders: a tiny ImageFolder of real JPEG files (written
here), and a sweep with the paper's ImageNet recipe (2015 §3.4: scale augmentation, random crop
and flip, PCA lighting, per-pixel mean; SGD momentum 0.9, wd 1e-4, lr ÷10 at a third and two
thirds) training an ImageNet-arch ResNet-18 on it end to end on real Ray and a real MLflow store:
per-epoch metrics, 10-crop testing of the final model, Ctrl-C and `resnet-sweep resume`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from orchestrator.running.trainable import CHECKPOINT_FILE
from resnet_core import metrics as M
from tests.support import (
    CLASSES,
    TRAIN_PER_CLASS,
    VAL_PER_CLASS,
    child_runs,
    cli,
    ctrl_c_when,
    migrated_store,
    table_rows,
    write_folder,
)

# A relative root with a space in it: the sweeps run in one folder, the images are below it.
ROOT = "image folders/tiny set"
EPOCHS = 5  # enough that Ctrl-C after the first checkpoint lands with both trials midway
LRS = (0.01, 0.02)  # batch 8 instead of 256: the paper's 0.1, scaled down
SWEEP = """\
name: {name}
description: the ImageNet recipe (2015 §3.4) on a tiny folder of real JPEGs, 32 px crops
dataset: {{name: imagefolder, root: {root}, image_size: 32, scale_range: [36, 48], val_per_class: {val}}}
metric: {{name: val_error, mode: min}}
model: {{arch: imagenet, depth: 18}}
train: {{epochs: {epochs}, batch_size: 8, milestones: [0.333333, 0.666667]}}
search:
  algorithm: grid
  space:
    train.lr: [{lrs}]
resources: {{cpu: 1}}
"""
NAMES = [f"resnet18-basic-B-lr{lr:g}-s0" for lr in LRS]
# Every per-epoch metric but the speed ones (images/s, seconds), which differ from run to run.
EXACT = (M.ITERATION, M.TRAIN_LOSS, M.TRAIN_ERROR, M.VAL_LOSS, M.VAL_ERROR, M.TEST_ERROR, M.LR)


def write_sweep(cwd: Path, name: str) -> Path:
    """The images at ``cwd / ROOT`` (written once) and the sweep file ``cwd / NAME.yaml``."""
    if not (cwd / ROOT).exists():
        write_folder(cwd / ROOT)
    path = cwd / f"{name}.yaml"
    path.write_text(
        SWEEP.format(name=name, root=ROOT, val=VAL_PER_CLASS, epochs=EPOCHS, lrs=", ".join(f"{lr:g}" for lr in LRS))
    )
    return path


def interrupt_after_first_checkpoint(cwd: Path, name: str) -> str:
    """`resnet-sweep run NAME.yaml`, Ctrl-C (SIGINT) once a trial has reported an epoch and its
    checkpoint is on disk; returns all it printed (exit 130 checked)."""
    checkpoints = []
    out = ctrl_c_when(
        "run",
        f"{name}.yaml",
        "--no-report",
        cwd=cwd,
        printed=r"^\[\d\d:\d\d\] epoch +\d+/\d+ ",
        before=lambda: checkpoints.extend((cwd / "ray_results" / name).glob(f"*/checkpoint_*/{CHECKPOINT_FILE}")),
    )
    assert ctrl_c_when.returncode == 130, out[-3000:]
    assert checkpoints, out[-3000:]  # the signal came after the first checkpoint was saved
    return out


def logged(client: MlflowClient, experiment: str) -> dict[str, dict]:
    """Child run name → its run, and every metric's (step, value) history, in logging order."""
    _, children = child_runs(client, experiment)
    runs = {}
    for run in children:
        keys = M.METRICS + M.FINAL_METRICS
        history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] for key in keys}
        runs[run.info.run_name] = {"run": run, "metrics": history}
    assert len(runs) == len(children), "one child run per trial, names unique"
    return runs


def check_trained_on_the_folder(client: MlflowClient, experiment: str, cwd: Path, scratch: Path) -> dict[str, dict]:
    """Every trial completed with the ImageNet recipe on the folder: epochs 1…N logged once each,
    the lr divided by 10 twice, the final model's 10-crop errors, Fig. 7 on the 16 3×3 convs."""
    parents, _ = child_runs(client, experiment)
    assert len(parents) == 1 and parents[0].data.tags["status"] == "completed"
    runs = logged(client, experiment)
    assert sorted(runs) == sorted(NAMES)
    for name, lr in zip(NAMES, LRS, strict=True):
        run, metrics = runs[name]["run"], runs[name]["metrics"]
        assert (run.data.tags["status"], run.info.status) == ("completed", "FINISHED"), name
        assert 1 <= int(run.data.tags["best_epoch"]) <= EPOCHS
        params = run.data.params
        assert {k: params[k] for k in ("model.arch", "model.depth", "model.block", "dataset.name")} == {
            "model.arch": "imagenet",
            "model.depth": "18",
            "model.block": "basic",
            "dataset.name": "imagefolder",
        }
        assert json.loads(params["dataset.scale_range"]) == [36, 48] and params["dataset.image_size"] == "32"
        assert (params["dataset.augment"], params["dataset.lighting"], params["dataset.normalize"]) == (
            "True",
            "0.1",
            "pixel-mean",
        )
        assert params["dataset.root"] == str((cwd / ROOT).resolve())  # resolved where the sweep started
        assert (float(params["train.lr"]), params["train.momentum"], params["train.weight_decay"]) == (
            lr,
            "0.9",
            "0.0001",
        )
        for key in M.METRICS:  # every per-epoch metric, every epoch, exactly once
            assert [step for step, _ in metrics[key]] == list(range(1, EPOCHS + 1)), (name, key, metrics[key])
        for key in (M.TRAIN_ERROR, M.VAL_ERROR, M.TEST_ERROR):
            assert all(0 <= value <= 1 for _, value in metrics[key]), (name, key)
        iterations_per_epoch = math.ceil(CLASSES * (TRAIN_PER_CLASS - VAL_PER_CLASS) / 8)
        assert [value for _, value in metrics[M.ITERATION]] == [iterations_per_epoch * e for e in range(1, EPOCHS + 1)]
        lrs = [value for _, value in metrics[M.LR]]
        assert lrs[0] == lr and lrs == sorted(lrs, reverse=True), lrs
        assert [round(value / lr, 6) for value in dict.fromkeys(lrs)] == [1, 0.1, 0.01], lrs  # ÷10 twice
        # 10-crop testing of the final model, once, at the last epoch.
        ((step, top1),) = metrics[M.TEST_ERROR_10CROP]
        ((step5, top5),) = metrics[M.TEST_TOP5_ERROR_10CROP]
        assert step == step5 == EPOCHS and 0 <= top5 <= top1 <= 1, (top1, top5)
        assert top5 == 0  # 3 classes: the right one is always among the top 5
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"learning_curve.png", "layer_responses.json", "layer_responses.png"} <= artifacts, artifacts
        folder = scratch / experiment / name
        folder.mkdir(parents=True)
        responses = json.loads(
            Path(client.download_artifacts(run.info.run_id, "layer_responses.json", str(folder))).read_text()
        )
        values = responses["layer_response_std"]
        assert len(values) == 16 and all(v > 0 for v in values)  # ResNet-18's 3×3 convs; the 7×7 stem is not one
    return runs


def interrupted_then_resumed(cwd: Path, name: str) -> MlflowClient:
    """Ctrl-C after the first checkpoint (unfinished trials `interrupted` in the table and in
    MLflow), then `resnet-sweep resume NAME` finishes the sweep (exit 0, every trial completed)."""
    write_sweep(cwd, name)
    out = interrupt_after_first_checkpoint(cwd, name)
    rows = {row.split()[0]: row for row in table_rows(out)}
    assert set(rows) <= set(NAMES) and all(" interrupted at epoch " in row for row in rows.values()), out[-3000:]
    # Trials that reported an epoch; one Tune had not started yet is `interrupted at epoch 0` in
    # the table and has no MLflow run until `resume` starts it.
    midway = {n for n, row in rows.items() if not re.search(r" interrupted at epoch 0 ", row)}
    assert midway, out[-3000:]  # the sweep was stopped midway, so `resume` has something to do
    assert f"resnet-sweep resume {cwd / 'ray_results' / name}" in out, out[-3000:]
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    before = {r.info.run_name: r for r in child_runs(client, name)[1]}
    assert midway <= set(before) <= set(rows), (midway, set(before), out[-3000:])
    for run in before.values():
        assert (run.data.tags["status"], run.info.status) == ("interrupted", "KILLED"), run.info.run_name

    # From another folder, by path: the relative root is still the one the sweep started with.
    resumed = cli("resume", str(cwd / "ray_results" / name), "--no-report", cwd=cwd.parent, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert sorted(row.split()[0] for row in table_rows(resumed.stdout)) == sorted(NAMES), resumed.stdout[-3000:]
    assert all(" completed " in row for row in table_rows(resumed.stdout)), resumed.stdout[-3000:]
    return client


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> SimpleNamespace:
    """`resnet-sweep plan` and `run` of the sweep, uninterrupted, in a folder of its own (the
    working directory: the images are at the relative ``ROOT`` below it)."""
    cwd = tmp_path_factory.mktemp("sweep")
    write_sweep(cwd, "straight")
    planned = cli("plan", "straight.yaml", "--json", cwd=cwd)
    migrated_store(cwd)
    ran = cli("run", "straight.yaml", "--no-report", cwd=cwd, timeout=600)
    return SimpleNamespace(cwd=cwd, planned=planned, ran=ran, client=MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}"))


def test_imagenet_recipe_sweep_trains_resnet18_on_an_image_folder_end_to_end(straight, tmp_path):
    """Must show the ImageNet acceptance item: `plan` reads the folder (a relative root with a
    space in it); `run` trains an ImageNet-arch ResNet-18 on real JPEGs with the paper's recipe
    on real Ray; each trial's MLflow child run has its scale range and recipe as params, every
    per-epoch metric at epochs 1…N once each, the lr drops, and the final model's 10-crop
    top-1 / top-5 test errors. (Ctrl-C and `resume`: the slow test below.)"""
    assert straight.planned.returncode == 0, straight.planned.stderr
    plan = json.loads(straight.planned.stdout)
    assert sorted(t["name"] for t in plan["trials"]) == sorted(NAMES)
    assert plan["train_images"] == CLASSES * (TRAIN_PER_CLASS - VAL_PER_CLASS)  # val held out per class
    assert plan["trials"][0]["config"]["dataset.root"] == str((straight.cwd / ROOT).resolve())
    assert plan["epochs_per_trial"] == EPOCHS and list(plan["models"]) == ["resnet18-basic-B"]

    ran = straight.ran
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    rows = table_rows(ran.stdout)
    assert sorted(row.split()[0] for row in rows) == sorted(NAMES) and all(" completed " in row for row in rows), (
        ran.stdout
    )
    check_trained_on_the_folder(straight.client, "straight", straight.cwd, tmp_path)


@pytest.mark.slow  # two more sweep processes (~1 min); the generic Ctrl-C test is test_sweeps'
def test_image_folder_sweep_interrupted_then_resumed_logs_what_an_uninterrupted_one_does(straight, tmp_path):
    """Ctrl-C once the first checkpoint is saved (unfinished trials `interrupted` in the table
    and MLflow), then `resnet-sweep resume`: every trial completed, epochs 1…N logged exactly
    once each, the 10-crop errors of the final model; and every per-epoch metric and the 10-crop
    errors are those of the sweep run straight through, bit for bit (fp32 on CPU, one thread per
    trial; every random number of the streaming loader comes from the trial's seed)."""
    assert straight.ran.returncode == 0, straight.ran.stderr[-3000:]
    whole = logged(straight.client, "straight")
    client = interrupted_then_resumed(straight.cwd, "resumed")
    again = check_trained_on_the_folder(client, "resumed", straight.cwd, tmp_path)
    for name in NAMES:
        for key in EXACT + M.FINAL_METRICS:
            assert again[name]["metrics"][key] == whole[name]["metrics"][key], (name, key)
        assert again[name]["run"].data.tags["best_epoch"] == whole[name]["run"].data.tags["best_epoch"]
    assert len(child_runs(client, "resumed")[1]) == len(NAMES)  # no duplicate child runs

    status = cli("status", "resumed", "--json", cwd=straight.cwd)
    assert status.returncode == 0, status.stderr
    standing = json.loads(status.stdout)
    assert (standing["planned"], standing["done"], standing["state"]) == (2, 2, "completed")
    assert standing["epochs_done"] == standing["epochs_planned"] == 2 * EPOCHS
