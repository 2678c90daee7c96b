"""[11/11] Data-parallel trials (resources.workers): Ray Train's TorchTrainer runs the trial's
processes (gloo on CPU here), which together train exactly the batches one process would."""
from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from resnet_core.config import DataConfig, ModelConfig, TrainConfig
from resnet_core.data import make_loaders
from resnet_core.distributed import Shard
from resnet_core.train import RunConfig, Trainer
from tests.conftest import cli, ctrl_c_when
from tests.test_imagefolder import write_folder
from tests.test_sweeps import child_runs, table_rows

# Batch 64 of 1,077 training images: the last batch (53) splits 27 + 26. lr 0.02: at the paper's
# 0.1 a batch of 64 amplifies rounding differences chaotically within an epoch.
SWEEP = """\
name: {name}
dataset: {{name: digits, image_size: 16}}
model: {{arch: cifar, depth: 8}}
train: {{epochs: {epochs}, batch_size: 64, lr: 0.02, seed: 3{extra}}}
resources: {{cpu: 1, workers: 2}}
"""
LOGGED = ("train_loss", "train_error", "val_loss", "val_error", "test_error")


@pytest.mark.parametrize("data", [
    DataConfig(name="digits", image_size=16, train_limit=100),  # in memory, CIFAR's pad-crop-flip
    "folder",  # streamed JPEGs: scale augmentation, flips, lighting
])
def test_the_workers_parts_of_each_batch_make_up_the_batch_one_process_trains(data, tmp_path):
    """Each of 3 workers draws the global order and augmentation and keeps its part: together,
    in rank order, they are exactly one process's batches (a short last batch of 4 splits 2+2+0)."""
    if data == "folder":
        data = DataConfig(name="imagefolder", root=str(write_folder(tmp_path)), image_size=32, scale_range=(36, 48),
                          val_per_class=2, workers=0, train_limit=28)
    cfg = RunConfig(model=ModelConfig(depth=8), dataset=data, train=TrainConfig(batch_size=8, epochs=1, device="cpu"))

    def batches(shard: Shard) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loaders = make_loaders(cfg, torch.device("cpu"), torch.Generator().manual_seed(5), shard=shard)
        return [*loaders.train, *loaders.train, *loaders.test]  # two epochs (new order and crops), then test

    whole = batches(Shard())
    parts = [batches(Shard(rank, 3)) for rank in range(3)]
    assert all(len(p) == len(whole) for p in parts)
    for i, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([p[i][0] for p in parts]), x), i
        assert torch.equal(torch.cat([p[i][1] for p in parts]), y), i
    last = len(make_loaders(cfg, torch.device("cpu"), torch.Generator(), shard=Shard()).train) - 1
    assert [len(p[last][1]) for p in parts] == [2, 2, 0]  # the first epoch's last batch


def _history(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    return {key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in LOGGED}


def _only_run(client: MlflowClient, experiment: str):
    parents, children = child_runs(client, experiment)
    assert len(parents) == 1 and len(children) == 1, [r.info.run_name for r in children]
    return children[0]


def test_two_workers_match_one_with_the_same_global_batch(tmp_path):
    """Must show 2: a trial of 2 data-parallel workers logs the loss curve of the 1-process run
    of the same config and seed (equal up to float rounding of the all-reduce, which training
    then amplifies), as one MLflow child run."""
    (tmp_path / "ddp.yaml").write_text(SWEEP.format(name="ddp", epochs=2, extra=""))
    plan = cli("plan", "ddp.yaml", "--json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    (trial,) = json.loads(plan.stdout)["trials"]
    out = cli("run", "ddp.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(table_rows(out.stdout)) == 1, out.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = _only_run(client, "ddp")
    assert run.data.tags["status"] == "completed"
    assert run.data.tags["speed"].endswith("ddp=2"), run.data.tags
    logged = _history(client, run.info.run_id)

    alone = Trainer(RunConfig.from_flat(trial["config"])).run()["history"]  # the same trial in one process
    assert len(logged["train_loss"]) == len(alone) == 2
    first = (logged["train_loss"][0], alone[0]["train_loss"])
    assert abs(first[0] - first[1]) < 1e-5 * first[1], first  # one epoch: rounding only
    assert abs(logged["val_loss"][0] - alone[0]["val_loss"]) < 1e-4 * alone[0]["val_loss"]
    for key in ("train_loss", "val_loss"):  # later: rounding, amplified by training
        for epoch, (ddp, one) in enumerate(zip(logged[key], (h[key] for h in alone)), 1):
            assert abs(ddp - one) < 1e-2 * one, (key, epoch, ddp, one)


@pytest.mark.slow
def test_per_worker_batch_norm_differs_and_ctrl_c_resumes_a_data_parallel_trial(tmp_path):
    """sync_bn: false (each worker's own half-batch statistics) is a different computation, far
    from the 1-process curve; Ctrl-C midway and `resume` continue the trial from its checkpoint:
    every epoch logged once, the curve the uninterrupted run's."""
    (tmp_path / "local.yaml").write_text(SWEEP.format(name="ddp-local-bn", epochs=4, extra=", sync_bn: false"))
    (tmp_path / "synced.yaml").write_text(SWEEP.format(name="ddp-synced", epochs=4, extra=""))
    config = json.loads(cli("plan", "synced.yaml", "--json", cwd=tmp_path).stdout)["trials"][0]["config"]
    alone = Trainer(RunConfig.from_flat(config)).run()["history"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    out = cli("run", "local.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    local = _history(client, _only_run(client, "ddp-local-bn").info.run_id)["train_loss"][0]
    assert abs(local - alone[0]["train_loss"]) > 1e-3 * alone[0]["train_loss"], (local, alone[0]["train_loss"])

    printed = ctrl_c_when("run", "synced.yaml", cwd=tmp_path, printed=r"^\[\d\d:\d\d\] epoch +2/")
    assert ctrl_c_when.returncode == 130, printed[-3000:]
    assert _only_run(client, "ddp-synced").data.tags["status"] == "interrupted"
    out = cli("resume", "ddp-synced", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = _only_run(client, "ddp-synced")
    assert run.data.tags["status"] == "completed"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == [1, 2, 3, 4]
    for ddp, one in zip(_history(client, run.info.run_id)["train_loss"], (h["train_loss"] for h in alone)):
        assert abs(ddp - one) < 1e-2 * one, (ddp, one)


@pytest.mark.slow
def test_a_data_parallel_trial_spans_two_nodes(tmp_path):
    """A trial of 2 workers of 1 CPU on a cluster of two 1-CPU nodes (separate `ray start`
    processes) can only run with one worker on each node: it completes, with the loss curve of
    one process."""
    from tests.ray_nodes import LocalCluster, token_home

    cluster = LocalCluster(token_home(tmp_path))
    try:
        cluster.start_head()
        cluster.add_worker()
        (tmp_path / "ddp.yaml").write_text(SWEEP.format(name="ddp-nodes", epochs=2, extra=""))
        config = json.loads(cli("plan", "ddp.yaml", "--json", cwd=tmp_path).stdout)["trials"][0]["config"]
        out = cli("run", "ddp.yaml", "--address", cluster.address, cwd=tmp_path, env={"HOME": str(cluster.env["HOME"])})
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    finally:
        cluster.shutdown()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = _only_run(client, "ddp-nodes")
    assert run.data.tags["status"] == "completed"
    alone = Trainer(RunConfig.from_flat(config)).run()["history"]
    for ddp, one in zip(_history(client, run.info.run_id)["train_loss"], (h["train_loss"] for h in alone), strict=True):
        assert abs(ddp - one) < 1e-2 * one, (ddp, one)
