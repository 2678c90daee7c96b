"""The trainer on CUDA: mixed precision + channels_last, device-resident batches, exact resume.

Skipped without a GPU; ``bench/gpu.sh`` runs these on a CUDA machine. Each takes a few seconds.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from resnet_core import metrics as M
from resnet_core.data import DataConfig
from resnet_core.resnet import ModelConfig
from resnet_core.train import RunConfig, TrainConfig, Trainer

DEVICE = "cuda"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_run(**train) -> RunConfig:
    train = {"epochs": 2, "batch_size": 64, "device": DEVICE, **train}
    return RunConfig(
        model=ModelConfig(depth=8),
        dataset=DataConfig(name="synthetic", synthetic_size=512, val_size=64, augment=True),
        train=TrainConfig(**train),
    )


def test_bf16_channels_last_epoch_trains_on_cuda():
    trainer = Trainer(tiny_run(epochs=1, precision="bf16", channels_last=True))
    conv = trainer.model.stem[0].weight
    assert conv.device.type == DEVICE
    assert conv.is_contiguous(memory_format=torch.channels_last)

    result = trainer.run()

    assert result["status"] == "completed"
    assert result["device"].startswith(DEVICE)
    loss = result["history"][0][M.TRAIN_LOSS]
    assert math.isfinite(loss) and loss > 0
    assert all(math.isfinite(p.detach().float().sum().item()) for p in trainer.model.parameters())


def test_device_loader_batches_live_on_cuda():
    trainer = Trainer(tiny_run(channels_last=True))
    assert trainer.splits.train_x.device.type == DEVICE

    batches = list(trainer.train_loader)

    assert len(batches) == len(trainer.train_loader)
    assert sum(len(y) for _, y in batches) == len(trainer.splits.train_x)
    for x, y in batches:
        assert x.device.type == DEVICE and y.device.type == DEVICE
        assert x.dtype == torch.float32 and y.dtype == torch.long
        assert x.shape[1:] == (3, 32, 32)
        assert x.is_contiguous(memory_format=torch.channels_last)
    # Augmented and shuffled on the device: two epochs draw different batches.
    again = next(iter(trainer.train_loader))[0]
    assert not torch.equal(again, batches[0][0])


def test_resume_on_cuda_reproduces_next_epoch():
    checkpoints = {}

    def keep(report):
        buffer = io.BytesIO()  # through torch.save / torch.load, as a real checkpoint goes
        torch.save(report.checkpoint(), buffer)
        checkpoints[report.epoch] = buffer.getvalue()

    # Deterministic cuDNN kernels, so any difference comes from the checkpoint, not the algorithm.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        straight = Trainer(tiny_run(precision="fp32"))
        straight.run(keep)

        resumed = Trainer(tiny_run(precision="fp32"))
        resumed.load_state_dict(torch.load(io.BytesIO(checkpoints[1]), weights_only=True))
        assert resumed.epoch == 1
        resumed.run()

    assert resumed.epoch == straight.epoch == 2
    expected = straight.history[1][M.TRAIN_LOSS]
    got = resumed.history[1][M.TRAIN_LOSS]
    assert got == pytest.approx(expected, abs=1e-5)
    one_image = 1 / len(resumed.splits.train_x)
    assert resumed.history[1][M.TRAIN_ERROR] == pytest.approx(straight.history[1][M.TRAIN_ERROR], abs=one_image)


def test_defaults_on_cuda_are_the_fast_levers():
    trainer = Trainer(tiny_run(epochs=1))
    assert str(trainer.speed) == "bf16 channels_last fused-sgd"
    assert trainer.optimizer.defaults["fused"] is True
    assert trainer.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_every_lever_with_cuda_graphs_matches_fp32_eager_and_resumes():
    """The CUDA side of tests/test_speed.py: bf16, channels_last, fused SGD and torch.compile
    with CUDA graphs ("reduce-overhead") learn what fp32 eager learns, and resume."""

    def run(**speed):
        return tiny_run(epochs=6, lr=0.05, **speed)

    eager = Trainer(run(precision="fp32", channels_last=False, fused_sgd=False)).run()
    fast = Trainer(run(precision="bf16", channels_last=True, compile="reduce-overhead"))
    states = {}
    result = fast.run(lambda r: states.setdefault(r.epoch, r.checkpoint()) if r.epoch == 3 else None)
    n = len(fast.splits.test_y)
    a, b = eager["test_error"], result["test_error"]
    assert abs(a - b) <= max(2 * math.sqrt((a * (1 - a) + b * (1 - b)) / n), 0.03), (a, b)

    resumed = Trainer(run(precision="bf16", channels_last=True, compile="reduce-overhead"))
    resumed.load_state_dict(states[3])
    again = resumed.run()
    for x, y in zip(result["history"], again["history"], strict=True):
        assert y[M.TRAIN_LOSS] == pytest.approx(x[M.TRAIN_LOSS], rel=1e-3)
        assert y[M.VAL_ERROR] == pytest.approx(x[M.VAL_ERROR], abs=2 / len(fast.splits.val_y))


def test_an_image_folder_streams_to_the_gpu_and_resumes_exactly(tmp_path):
    """Decoding workers, pinned batches, normalisation, flips and lighting on the card, 10-crop
    testing; a restored loader gives the next epoch's batches exactly, and (deterministic cuDNN,
    fp32) the resumed run the same epoch 2."""
    from tests.support import recipe, write_folder

    cfg = recipe(write_folder(tmp_path / "images"), workers=2)
    cfg = RunConfig(cfg.model, cfg.dataset, TrainConfig(**{**vars(cfg.train), "device": DEVICE, "precision": "fp32"}))
    states = []
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        full = Trainer(cfg).run(lambda r: states.append(r.checkpoint()) if r.epoch == 1 else None)
        resumed = Trainer(cfg)
        resumed.load_state_dict(states[0])
        again = resumed.run()
    assert full["status"] == "completed" and 0 <= full[M.TEST_ERROR_10CROP] <= 1
    assert again["history"][1][M.TRAIN_LOSS] == pytest.approx(full["history"][1][M.TRAIN_LOSS], abs=1e-5)

    fresh = Trainer(cfg)
    for _ in fresh.train_loader:  # epoch 1's draws
        pass
    restored = Trainer(cfg)
    restored.load_state_dict(states[0])
    for (xa, ya), (xb, yb) in zip(fresh.train_loader, restored.train_loader, strict=True):
        assert xa.device.type == DEVICE and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_an_array_on_cuda_trains_each_member_as_its_single_trial():
    """The CUDA path of trial arrays (every conv grouped, torch's fused SGD per member):
    in fp32 each member ends within rounding of its single trial, and a diverging member is
    frozen while the other goes on."""
    from resnet_core.array import ArrayTrainer

    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        members = [tiny_run(precision="fp32", seed=s, lr=lr) for s, lr in ((0, 0.05), (1, 0.1))]
        results = ArrayTrainer(members).run()
        alone = [Trainer(cfg).run() for cfg in members]
        for member, single in zip(results, alone, strict=True):
            assert member["status"] == single["status"] == "completed"
            for a, b in zip(member["history"], single["history"], strict=True):
                assert a[M.TRAIN_LOSS] == pytest.approx(b[M.TRAIN_LOSS], rel=1e-3)

        bf16 = ArrayTrainer([tiny_run(seed=0), tiny_run(seed=1, lr=1e4)]).run()
        assert [r["status"] for r in bf16] == ["completed", "diverged"]
