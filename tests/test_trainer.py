"""The trainer: the paper's recipe, exact resume, divergence, layer responses, data."""

import dataclasses
import json

import pytest
import torch

from orchestrator.cli import main
from resnet_core import metrics as M
from resnet_core.data import DataConfig, DataUnavailableError, DeviceLoader, load_splits
from resnet_core.errors import ConfigError
from resnet_core.resnet import ModelConfig
from resnet_core.train import RunConfig, TrainConfig, Trainer, lr_factor, planned_epochs
from tests.support import cli


def tiny(**train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(depth=8, width=1),
        dataset=DataConfig(name="synthetic", synthetic_size=192, image_size=16, val_size=48, augment=True),
        train=TrainConfig(batch_size=32, **{"epochs": 3, **train}),
    )


@pytest.mark.unit
def test_paper_schedule_in_iterations():
    cfg = TrainConfig()  # 64k iterations, drops at 32k and 48k
    lrs = {s: cfg.lr * lr_factor(s, 64000, cfg) for s in (0, 31999, 32000, 47999, 48000, 63999)}
    assert lrs[0] == lrs[31999] == pytest.approx(0.1)
    assert lrs[32000] == lrs[47999] == pytest.approx(0.01)
    assert lrs[48000] == pytest.approx(0.001)
    assert planned_epochs(cfg, 352) == 182  # 45k images at batch 128


@pytest.mark.unit
def test_short_run_keeps_drops_at_half_and_three_quarters():
    cfg = TrainConfig(epochs=30)
    steps_per_epoch, total = 10, 300
    drops = [s for s in range(1, total) if lr_factor(s, total, cfg) != lr_factor(s - 1, total, cfg)]
    assert [d / steps_per_epoch for d in drops] == [15.0, 22.5]


@pytest.mark.unit
def test_warmup_truly_returns_to_base_lr():
    cfg = TrainConfig(warmup_iterations=400, warmup_lr=0.01)
    assert cfg.lr * lr_factor(399, 64000, cfg) == pytest.approx(0.01)
    assert cfg.lr * lr_factor(400, 64000, cfg) == pytest.approx(0.1)
    trainer = Trainer(tiny(warmup_iterations=6, warmup_lr=0.01, epochs=20))
    seen = []
    for _ in range(8):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert seen[:6] == [pytest.approx(0.01)] * 6 and seen[6] == pytest.approx(0.1)


@pytest.mark.unit
def test_resume_reproduces_the_uninterrupted_run_exactly():
    full = Trainer(tiny(epochs=3)).run()
    first = Trainer(tiny(epochs=3))
    states = []
    first.run(lambda r: states.append(r.checkpoint()) if r.epoch == 1 else None)
    state = states[0]
    torch.save(state, "/dev/null")  # a checkpoint must be serialisable
    resumed = Trainer(tiny(epochs=3))
    resumed.load_state_dict(state)
    result = resumed.run()
    keys = (M.TRAIN_LOSS, M.TRAIN_ERROR, M.VAL_LOSS, M.VAL_ERROR, M.TEST_ERROR, M.LR)
    for a, b in zip(full["history"], result["history"], strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert full["layer_response_std"] == result["layer_response_std"]


@pytest.mark.unit
def test_best_epoch_is_chosen_on_val_not_test():
    trainer = Trainer(tiny(epochs=1))
    trainer.history = [
        {M.EPOCH: 1, M.VAL_ERROR: 0.3, M.TEST_ERROR: 0.1, M.TRAIN_ERROR: 0.5},
        {M.EPOCH: 2, M.VAL_ERROR: 0.2, M.TEST_ERROR: 0.4, M.TRAIN_ERROR: 0.4},
    ]
    assert trainer.best_epoch()[M.EPOCH] == 2


@pytest.mark.unit
def test_layer_responses_one_per_3x3_conv_in_eval_mode():
    trainer = Trainer(tiny(epochs=1))
    trainer.model.train()
    stds = trainer.layer_response_std()
    assert len(stds) == 7  # depth 8: the stem conv + 2 per block × 3 blocks
    assert all(s > 0 for s in stds) and trainer.model.training  # mode restored


@pytest.mark.unit
def test_device_loader_augments_in_batches_with_the_paper_crop():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    loader = DeviceLoader(
        x.to(torch.uint8),
        torch.zeros(2, dtype=torch.long),
        batch_size=2,
        mean=torch.zeros(1),
        std=torch.ones(1),
        train=True,
        augment=True,
        generator=torch.Generator().manual_seed(0),
    )
    batch, _ = next(iter(loader))
    assert batch.shape == (2, 3, 8, 8)
    loader_plain = DeviceLoader(
        x.to(torch.uint8), torch.zeros(2, dtype=torch.long), batch_size=2, mean=torch.zeros(1), std=torch.ones(1)
    )
    plain, _ = next(iter(loader_plain))
    assert torch.equal(plain, x.to(torch.uint8).float() / 255)


@pytest.mark.unit
def test_splits_are_seeded_and_disjoint():
    a, b = load_splits(DataConfig(name="digits")), load_splits(DataConfig(name="digits"))
    assert torch.equal(a.val_x, b.val_x)
    assert (len(a.train_x), len(a.val_x), len(a.test_x)) == (1258, 180, 359)
    assert a.train_x.shape[1:] == (3, 32, 32) and a.train_x.dtype == torch.uint8


@pytest.mark.unit
def test_cifar_offline_is_a_clear_error(tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        load_splits(DataConfig(name="cifar10", cache_dir=str(tmp_path)))
    assert str(tmp_path) in str(err.value) and "cifar-10-python.tar.gz" in str(err.value)


@pytest.mark.unit
def test_bad_recipe_values_name_the_field():
    for kwargs, field in [
        (dict(lr=-1), "train.lr"),
        (dict(precision="fp8"), "train.precision"),
        (dict(epochs=3, iterations=5), "train.epochs"),
    ]:
        with pytest.raises(ConfigError) as err:
            TrainConfig(**kwargs)
        assert err.value.field == field


def test_train_cli_json_and_divergence(tmp_path, monkeypatch, capsys):
    """`resnet-sweep train` as a user runs it; then a diverging run (in-process: the same command
    line, without a second interpreter) ends with exit 3, one line, and its JSON says so."""
    out = cli(
        "train",
        "--dataset",
        "digits",
        "--image-size",
        "16",
        "--depth",
        "8",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--json-out",
        "r.json",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("epoch ") >= 2  # one progress line per epoch
    result = json.loads((tmp_path / "r.json").read_text())
    for key in (
        "status",
        "best_epoch",
        "train_error",
        "val_error",
        "test_error",
        "images_per_second",
        "layer_response_std",
    ):
        assert key in result
    assert result["status"] == "completed" and 0 <= result["test_error"] <= 1
    assert all(isinstance(v, float) for v in result["layer_response_std"])

    monkeypatch.chdir(tmp_path)
    argv = "train --dataset digits --image-size 16 --depth 20 --epochs 2 --lr 10 --json-out d.json".split()
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("diverged in epoch "), err
    assert json.loads((tmp_path / "d.json").read_text())["status"] == "diverged"


@pytest.mark.unit
def test_train_cli_checkpoint_and_resume(tmp_path, monkeypatch, capsys):
    """`train --checkpoint-dir`, then `train --resume` of its first epoch ends where the straight
    run ended (in-process: the command line itself runs as a process in the test above)."""
    monkeypatch.chdir(tmp_path)
    args = "train --dataset synthetic --image-size 16 --depth 8 --batch-size 64 --epochs 2".split()
    assert main([*args, "--checkpoint-dir", "ck", "--json-out", "full.json"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume", "ck/epoch0001.pt", "--json-out", "resumed.json"]) == 0
    assert "resumed from ck/epoch0001.pt at epoch 1" in capsys.readouterr().err
    full, resumed = (json.loads((tmp_path / f).read_text()) for f in ("full.json", "resumed.json"))
    assert full["history"][-1][M.VAL_ERROR] == resumed["history"][-1][M.VAL_ERROR]
    assert full["history"][-1][M.TRAIN_LOSS] == resumed["history"][-1][M.TRAIN_LOSS]


@pytest.mark.slow
def test_digits_resnet20_30_epochs_reaches_3_percent(tmp_path):
    out = cli(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "cifar",
        "--depth",
        "20",
        "--block",
        "basic",
        "--shortcut",
        "A",
        "--epochs",
        "30",
        "--json-out",
        "r.json",
        cwd=tmp_path,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "r.json").read_text())["test_error"] <= 0.03


@pytest.mark.unit
def test_a_last_batch_of_one_image_joins_the_batch_before_it():
    """65 training images in batches of 8, ResNet-18 at 32 px (its last stage's maps are 1×1):
    a last batch of one image would stop batch norm ('Expected more than 1 value per channel');
    it trains with the 8th batch instead (9 images), as one process, an array and data-parallel
    shares do (resnet_core.config.batch_sizes), and an epoch is 8 iterations."""
    from resnet_core.array import ArrayTrainer
    from resnet_core.config import batch_sizes
    from resnet_core.distributed import Shard, smallest_training_batch

    assert batch_sizes(65, 8, smallest=2) == [8] * 7 + [9] and batch_sizes(66, 8, smallest=2) == [8] * 8 + [2]
    assert batch_sizes(5, 8, smallest=2) == [5]  # all there is
    assert smallest_training_batch(Shard(0, 2), sync_bn=True) == 2  # global statistics: as one process
    assert smallest_training_batch(Shard(0, 2), sync_bn=False) == 4  # each worker's share: 2 at least
    cfg = RunConfig(
        model=ModelConfig(arch="imagenet", depth=18),
        dataset=DataConfig(name="digits", image_size=32, train_limit=65, val_size=64, eval_limit=8),
        train=TrainConfig(batch_size=8, epochs=1, lr=0.01, device="cpu"),
    )
    result = Trainer(cfg).run()
    assert result["status"] == "completed" and result["history"][0]["iteration"] == 8
    members = ArrayTrainer([cfg, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=1))]).run()
    assert [m["status"] for m in members] == ["completed", "completed"]
