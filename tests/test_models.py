"""The model zoo against the papers' numbers and torchvision."""

import json
import subprocess
import sys

import pytest
import torch
import torchvision

from resnet_core.analysis import count_params, describe_model, shortcut_params, weighted_layers
from resnet_core.blocks import PadShortcut
from resnet_core.resnet import ModelConfig, build_model
from tests.support import cli

TABLE6_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}
TABLE1_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.unit
@pytest.mark.parametrize("depth", TABLE6_PARAMS_M)
def test_cifar_params_match_table6_for_residual_and_plain(depth):
    digits = 1 if depth >= 100 else 2
    for residual in (True, False):
        info = describe_model(ModelConfig(depth=depth, block="basic", shortcut="A", residual=residual))
        assert round(info["params"] / 1e6, digits) == TABLE6_PARAMS_M[depth]
        assert info["weighted_layers"] == depth


def test_describe_cli_json_matches_table6(tmp_path):
    out = cli(
        "describe", "--arch", "cifar", "--depth", "56", "--block", "basic", "--shortcut", "A", "--json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert isinstance(info["params"], int) and isinstance(info["macs"], int)
    assert round(info["params"] / 1e6, 2) == 0.85
    plain = json.loads(cli("describe", "--depth", "56", "--no-residual", "--json", cwd=tmp_path).stdout)
    assert plain["params"] == info["params"] and plain["residual"] is False


@pytest.mark.unit
@pytest.mark.parametrize("depth,paper_m", [(164, 1.7), (1001, 10.2)])
def test_preact_bottleneck_params(depth, paper_m):
    info = describe_model(ModelConfig(depth=depth, block="preact-bottleneck", shortcut="B"))
    assert info["weighted_layers"] == depth
    # The 2016 paper counts conv and FC weights (BN's affine parameters left out).
    assert round(info["params_without_bn"] / 1e6, 1) == paper_m
    # With BN: 1.70M and 10.33M, the numbers other PyTorch reproductions print.
    assert abs(info["params"] / 1e6 - paper_m) < 0.15


@pytest.mark.unit
@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_imagenet_matches_torchvision_exactly(depth):
    ours = build_model(ModelConfig(arch="imagenet", depth=depth, shortcut="B", bottleneck_stride="3x3"))
    theirs = getattr(torchvision.models, f"resnet{depth}")()
    assert count_params(ours) == count_params(theirs)
    assert sorted(tuple(p.shape) for p in ours.parameters()) == sorted(tuple(p.shape) for p in theirs.parameters())


@pytest.mark.unit
@pytest.mark.parametrize("depth", TABLE1_GMACS)
def test_imagenet_macs_match_table1(depth):
    info = describe_model(ModelConfig(arch="imagenet", depth=depth, bottleneck_stride="1x1"), input_size=224)
    assert abs(info["macs"] / 1e9 - TABLE1_GMACS[depth]) / TABLE1_GMACS[depth] < 0.03
    assert info["weighted_layers"] == depth


@pytest.mark.unit
def test_shortcut_options_on_cifar():
    a = build_model(ModelConfig(depth=20, shortcut="A"))
    b = build_model(ModelConfig(depth=20, shortcut="B"))
    c = build_model(ModelConfig(depth=20, shortcut="C"))
    assert sum(shortcut_params(a)) == 0
    assert sum(isinstance(m, PadShortcut) for m in a.modules()) == 2
    assert sum(1 for p in shortcut_params(b) if p) == 2  # the two stage transitions
    assert sum(1 for p in shortcut_params(c) if p) == 9  # every block
    assert count_params(a) < count_params(b) < count_params(c)
    plain = build_model(ModelConfig(depth=20, shortcut="B", residual=False))
    assert all(m.shortcut is None for m in plain.modules() if hasattr(m, "shortcut"))


@pytest.mark.unit
@pytest.mark.parametrize("block", ["basic", "bottleneck", "preact-basic", "preact-bottleneck"])
@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
def test_every_block_and_shortcut_runs(block, shortcut):
    depth = 11 if "bottleneck" in block else 8
    model = build_model(
        ModelConfig(depth=depth, block=block, shortcut=shortcut, drop_path=0.1, dropout=0.1, zero_init_last=True),
        num_classes=7,
    )
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert weighted_layers(model) == depth


@pytest.mark.unit
def test_zero_init_last_makes_blocks_start_as_identity():
    model = build_model(ModelConfig(depth=20, zero_init_last=True))
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in model.stages.modules() if hasattr(b, "bn2"))


@pytest.mark.unit
def test_paper_vs_torchvision_bottleneck_stride():
    paper = describe_model(ModelConfig(arch="imagenet", depth=50, bottleneck_stride="1x1"))
    tv = describe_model(ModelConfig(arch="imagenet", depth=50, bottleneck_stride="3x3"))
    assert paper["params"] == tv["params"] and paper["macs"] < tv["macs"]
    assert round(tv["macs"] / 1e9, 1) == 4.1


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(depth=21), ["21", "6n+2", "20, 32, 44, 56, 110"]),
        (dict(depth=21, block="bottleneck"), ["21", "9n+2", "164"]),
        (dict(arch="imagenet", depth=20, block="bottleneck"), ["20", "50, 101, 152"]),
        (dict(block="resnext"), ["resnext", "basic", "bottleneck", "preact-basic", "preact-bottleneck"]),
        (dict(shortcut="D"), ["'D'", "A, B, C"]),
        (dict(arch="imagenet", depth=20), ["20", "18, 34"]),
        (dict(arch="vit"), ["vit", "cifar, imagenet"]),
        (dict(bottleneck_stride="2x2"), ["2x2", "1x1, 3x3"]),
        (dict(drop_path=0.1, residual=False), ["drop_path", "residual"]),
        (dict(zero_init_last=True, residual=False), ["zero_init_last", "residual: true"]),
    ],
)
def test_invalid_models_raise_value_error_naming_value_and_choices(kwargs, words):
    with pytest.raises(ValueError) as err:
        ModelConfig(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_resnet_core_imports_no_orchestrator_dependency():
    code = (
        "import sys, resnet_core, resnet_core.train, resnet_core.analysis, resnet_core.data, resnet_core.registry\n"
        "bad = [m for m in ('ray', 'mlflow', 'yaml', 'pydantic', 'optuna') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_describe_bad_flag_exits_2_with_one_line(tmp_path):
    out = cli("describe", "--depth", "21", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--depth" in out.stderr and "6n+2" in out.stderr


@pytest.mark.unit
def test_config_error_survives_pickling():
    import pickle

    from resnet_core.errors import ConfigError

    err = pickle.loads(pickle.dumps(ConfigError("model.depth", "21 is not 6n+2")))
    assert err.field == "model.depth" and str(err) == "model.depth: 21 is not 6n+2"


@pytest.mark.unit
def test_block_names_are_the_blocks():
    """The settings name the blocks without importing torch; the names must be the blocks'."""
    from resnet_core.blocks import BLOCKS
    from resnet_core.config import BLOCK_NAMES

    assert BLOCK_NAMES == tuple(BLOCKS)
