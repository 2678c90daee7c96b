"""The speed levers change how fast, never what is learnt: with every lever on (bf16
autocast, channels_last, torch.compile, fused SGD) a digits run reaches fp32 eager's accuracy
with the same seed, and resumes exactly. CPU here; tests/test_gpu.py does the same on CUDA."""

import math

import pytest
import torch

from resnet_core import metrics as M
from resnet_core.data import DataConfig
from resnet_core.resnet import ModelConfig
from resnet_core.train import RunConfig, Speed, TrainConfig, Trainer

EAGER = dict(precision="fp32", channels_last=False, compile=False, fused_sgd=False)
EVERY_LEVER = dict(precision="bf16", channels_last=True, compile=True, fused_sgd=True)
EPOCHS = 8


def digits_run(**levers) -> RunConfig:
    return RunConfig(
        model=ModelConfig(depth=8),
        dataset=DataConfig(name="digits"),
        train=TrainConfig(epochs=EPOCHS, batch_size=64, lr=0.05, seed=3, device="cpu", **levers),
    )


@pytest.mark.unit
def test_auto_levers_on_cpu_are_exact_fp32():
    speed = Speed.resolve(TrainConfig(), torch.device("cpu"))
    assert (speed.precision, speed.channels_last, speed.compile, speed.fused_sgd) == ("fp32", False, False, True)
    assert str(speed) == "fp32 fused-sgd"
    assert str(Speed.resolve(TrainConfig(**EVERY_LEVER), torch.device("cpu"))) == "bf16 channels_last compile fused-sgd"


@pytest.mark.slow  # 4-8 min on 2 cores; the trainer's e2e tests and tests/test_torch_compat.py's kernel checks stay in the default suite
def test_every_speed_lever_matches_fp32_eager_and_resumes_exactly():
    eager = Trainer(digits_run(**EAGER)).run()

    fast = Trainer(digits_run(**EVERY_LEVER))
    assert fast.forward is not fast.model  # compiled
    assert fast.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.optimizer.defaults["fused"] is True
    states = {}
    result = fast.run(lambda r: states.setdefault(r.epoch, r.checkpoint()) if r.epoch == EPOCHS // 2 else None)

    # Same accuracy within noise: test error within twice the standard error of the difference
    # of two error rates on these test images (and at least 2 points), both nets well trained.
    n = len(fast.splits.test_y)
    a, b = eager[M.TEST_ERROR], result[M.TEST_ERROR]
    noise = 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)
    assert a < 0.1 and b < 0.1, (a, b)
    assert abs(a - b) <= max(noise, 0.02), (a, b, noise)
    assert result["speed"] == "bf16 channels_last compile fused-sgd" and eager["speed"] == "fp32"

    resumed = Trainer(digits_run(**EVERY_LEVER))
    resumed.load_state_dict(states[EPOCHS // 2])
    again = resumed.run()
    keys = (M.TRAIN_LOSS, M.TRAIN_ERROR, M.VAL_LOSS, M.VAL_ERROR, M.TEST_ERROR, M.LR)
    for x, y in zip(result["history"], again["history"], strict=True):
        assert {k: x[k] for k in keys} == {k: y[k] for k in keys}
    for p, q in zip(fast.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(p, q)
