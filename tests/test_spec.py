"""Sweep files and plans. Every bad input, with the line the user sees, is in the one
table of tests/test_bad_inputs.py."""

import copy
import json
import os
import pickle
import subprocess
import sys

import pytest

from orchestrator.cli import main
from orchestrator.sweepfile.model_counts import model_footprint
from orchestrator.sweepfile.plan import asha_expected_epochs, make_plan
from orchestrator.sweepfile.spec import SchedulerSpec, SpecError, parse_spec
from tests.support import SWEEPS, VALID


@pytest.mark.unit
@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_plan_succeeds_on_every_shipped_sweep(workdir, path, capsys):
    assert main(["plan", str(path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["num_trials"] >= 1 and plan["total_epochs"] >= plan["num_trials"]
    assert plan["models"] and all(m["params"] > 0 and m["macs"] > 0 for m in plan["models"].values())
    if plan["algorithm"] != "optuna":
        assert len(plan["trials"]) == plan["num_trials"]
        assert len({t["name"] for t in plan["trials"]}) == plan["num_trials"]
    assert list(workdir.iterdir()) == []  # plan writes nothing


def test_plan_cli_starts_no_ray_and_writes_nothing(tmp_path, tmp_path_factory):
    """`plan` imports no Ray or MLflow; once its models are counted (the count cache), no torch."""
    code = (
        "import sys; from orchestrator.cli import main; rc = main(['plan', sys.argv[1]]); "
        "print('imported:', *sorted({'ray', 'mlflow', 'torch'} & set(sys.modules))); sys.exit(rc)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}
    outs = [
        subprocess.run(
            [sys.executable, "-c", code, str(SWEEPS / "cifar_depth.yaml")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    assert [o.returncode for o in outs] == [0, 0], outs[0].stderr + outs[1].stderr
    assert "imported: torch\n" in outs[0].stdout  # counting the models
    assert "imported:\n" in outs[1].stdout  # counted before: nothing heavy
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
def test_cifar_depth_plan_is_table6():
    plan = make_plan(parse_spec((SWEEPS / "cifar_depth.yaml").read_text()))
    depths = sorted({t.config["model.depth"] for t in plan.trials})
    assert depths == [20, 32, 44, 56, 110] and plan.num_trials == 10
    assert plan.epochs_per_trial == 182  # 64k iterations at 352 steps per epoch


@pytest.mark.unit
def test_model_n_derives_depth_per_block():
    text = VALID.replace("model.depth: [8, 14]", "model.n: [2]\n    model.block: [basic, bottleneck]")
    text = text.replace("block: basic, ", "")
    plan = make_plan(parse_spec(text))
    assert sorted(t.config["model.depth"] for t in plan.trials) == [14, 20]


@pytest.mark.unit
def test_random_search_is_seeded_and_excludes():
    text = VALID.replace("grid", "random") + "  num_samples: 6\n  seeds: [0, 1]\n  exclude:\n    - {model.depth: 14}\n"
    text = text.replace("[8, 14]", "[8, 14]\n    train.lr: {loguniform: [0.01, 0.5]}")
    a, b = (make_plan(parse_spec(text), with_models=False) for _ in range(2))
    assert [t.config for t in a.trials] == [t.config for t in b.trials]
    assert all(t.config["model.depth"] == 8 for t in a.trials)
    assert {t.config["train.seed"] for t in a.trials} == {0, 1}


@pytest.mark.unit
def test_space_values_are_converted_and_excludes_see_defaults():
    text = VALID.replace("[8, 14]", "['8', '14']").replace("block: basic, ", "") + "    model.residual: [true, false]\n"
    text += "  exclude:\n    - {model.block: basic, model.residual: false, model.depth: 14}\n"  # block: the default
    plan = make_plan(parse_spec(text), with_models=False)
    assert sorted((t.config["model.depth"], t.config["model.residual"]) for t in plan.trials) == [
        (8, False),
        (8, True),
        (14, True),
    ]


@pytest.mark.unit
def test_plan_counts_models_at_the_data_size_and_classes():
    text = VALID.replace("arch: cifar, block: basic, shortcut: A", "arch: imagenet, block: basic, shortcut: B").replace(
        "[8, 14]", "[18]"
    )
    plan = make_plan(parse_spec(text))
    (model,) = plan.models.values()
    assert model["macs"] < 0.05e9  # 16-px digits, not 224 px
    assert model["params"] == 11_689_512 - 1000 * 512 - 1000 + 10 * 512 + 10  # a 10-way classifier


@pytest.mark.unit
def test_plan_counts_each_model_configuration_not_each_name():
    """Models with one short name but another bottleneck_stride or input size cost differently."""
    text = (
        VALID.replace("arch: cifar, block: basic, shortcut: A", "arch: imagenet, block: bottleneck, depth: 50")
        .replace("name: digits, image_size: 16", "name: digits")
        .replace("model.depth: [8, 14]", "model.bottleneck_stride: [1x1, 3x3]\n    dataset.image_size: [32, 64]")
    )
    plan = make_plan(parse_spec(text))
    assert len(plan.models) == 4 and len(set(plan.model_of)) == 4
    macs = {
        t.varying["model.bottleneck_stride"] + str(t.varying["dataset.image_size"]): plan.models[
            plan.model_of[t.index]
        ]["macs"]
        for t in plan.trials
    }
    assert macs["1x132"] < macs["3x332"] and 3.9 < macs["1x164"] / macs["1x132"] < 4.1
    single = [
        make_plan(parse_spec(text.replace("[1x1, 3x3]", f"[{s}]").replace("[32, 64]", f"[{px}]"))).gpu_hours
        for s in ("1x1", "3x3")
        for px in (32, 64)
    ]
    assert plan.gpu_hours == pytest.approx(sum(single))


@pytest.mark.unit
def test_exponent_floats_are_numbers_as_users_write_them():
    """YAML 1.1 reads 1e-3 as a string; a sweep file means a number (and gets one)."""
    text = """\
name: t
dataset: {name: digits, image_size: 16}
model: {arch: cifar, block: basic, shortcut: A}
train: {epochs: 2, batch_size: 64, weight_decay: 5E-4}
search:
  algorithm: random
  num_samples: 2
  space:
    train.lr: {loguniform: [1e-3, 1e-1]}
"""
    spec = parse_spec(text).spec
    assert spec.train["weight_decay"] == 5e-4 and spec.search.space["train.lr"] == {"loguniform": [1e-3, 1e-1]}
    plan = make_plan(parse_spec(text))
    assert plan.num_trials == 2 and all(
        c["train.weight_decay"] == 5e-4 and 1e-3 <= c["train.lr"] <= 1e-1 for c in plan.configs
    )


@pytest.mark.unit
def test_asha_budget_estimate():
    sched = SchedulerSpec(name="asha", grace_period=1, reduction_factor=3)
    # 27 trials: 27×1 + 9×2 + 3×6 + 1×(27−9) epochs with rungs 1, 3, 9 and max_t 27
    assert asha_expected_epochs(27, 27, sched) == 27 * 1 + 9 * 2 + 3 * 6 + 1 * 18


@pytest.mark.unit
def test_an_error_of_the_fixed_settings_names_no_trial():
    """'(in the trial model.depth=8)' would say the searched depth is to blame; it is not."""
    text = VALID.replace("shortcut: A", "shortcut: A, residual: false, zero_init_last: true")
    with pytest.raises(SpecError) as err:
        make_plan(parse_spec(text, "sweep.yaml"))
    assert err.value.path == "model.zero_init_last" and "in the trial" not in str(err.value), err.value


@pytest.mark.unit
def test_footprints_are_exact_without_building_the_model():
    """params and MACs from the meta-device extrapolation equal the built model's."""
    from resnet_core.analysis import describe_model
    from resnet_core.resnet import ModelConfig

    for model, size, classes in [
        (ModelConfig(depth=56), 32, 10),
        (ModelConfig(depth=164, block="preact-bottleneck", shortcut="C", bottleneck_stride="3x3", width=2), 32, 100),
        (ModelConfig(arch="imagenet", depth=50), 64, 1000),
    ]:
        built = describe_model(model, input_size=size, num_classes=classes)
        footprint = model_footprint(model, classes, size)
        assert (footprint.params, footprint.macs) == (built["params"], built["macs"])


@pytest.mark.unit
def test_size_limits_leave_real_sweeps_alone():
    """ResNet-1202 on CIFAR and on ImageNet (as stages), a width-10 WRN, 640 px and a grid of
    two thousand trials all plan."""
    big = (
        VALID.replace("[8, 14]", "[1202]")
        .replace("train: {", "train: {batch_size: 128, ")
        .replace(", batch_size: 64", "")
    )
    assert make_plan(parse_spec(big)).models["resnet1202-basic-A"]["params"] == 19_421_274  # Table 6: 19.4M
    imagenet = VALID.replace("arch: cifar, block: basic, shortcut: A", "arch: imagenet, block: bottleneck").replace(
        "name: digits, image_size: 16", "name: synthetic, image_size: 224, synthetic_classes: 1000"
    )
    (model,) = make_plan(
        parse_spec(imagenet.replace("model.depth: [8, 14]", "model.stages: [[3, 8, 386, 3]]"))
    ).models.values()
    assert model["params"] > 100e6  # 1202 layers
    make_plan(parse_spec(imagenet.replace("image_size: 224", "image_size: 640").replace("[8, 14]", "[50, 152]")))
    make_plan(
        parse_spec(VALID.replace("[8, 14]", "[26]").replace("shortcut: A", "shortcut: B, width: 10"))
    )  # WRN-26-10
    grid = VALID + "    train.seed: [" + ", ".join(map(str, range(1000))) + "]\n"
    assert make_plan(parse_spec(grid), with_models=False).num_trials == 2000


@pytest.mark.unit
def test_plan_warns_of_what_the_file_does_not_say(workdir, capsys):
    text = (
        VALID.replace("epochs: 2", "epochs: 20")
        + """\
budget: {max_epochs: 5}
scheduler: {grace_period: 4}
"""
    )
    text = text.replace("shortcut: A", "shortcut: A, bottleneck_stride: 3x3").replace(
        "batch_size: 64", "batch_size: 64, warmup_lr: 0.05"
    )
    (workdir / "sweep.yaml").write_text(text)
    assert main(["plan", "sweep.yaml"]) == 0
    out = capsys.readouterr()
    warnings = [line for line in out.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(out.err.splitlines()) == 4, out.err
    for words in (
        ["model.bottleneck_stride", "bottleneck blocks"],
        ["train.warmup_lr", "warmup_iterations"],
        ["scheduler.grace_period", "asha"],
        ["budget.max_epochs", "before its first trial ends (20 epochs)"],
    ):
        assert any(all(w in line for w in words) for line in warnings), (words, warnings)
    assert "budget: max_trials none, max_epochs 5" in out.out
    assert main(["plan", "sweep.yaml", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["budget"] == {"max_trials": None, "max_epochs": 5} and len(plan["warnings"]) == 4


@pytest.mark.unit
def test_plan_warns_when_the_paper_iterations_stand_in():
    """No epochs or iterations: 64k iterations, thousands of epochs on digits; and iterations
    shorter than an epoch are trained as a whole one."""
    plan = make_plan(parse_spec(VALID.replace("epochs: 2, ", "")), with_models=False)
    assert plan.epochs_per_trial == 3200 and any("64,000 iterations (up to 3,200 epochs" in w for w in plan.warnings)
    plan = make_plan(parse_spec(VALID.replace("epochs: 2", "iterations: 5")), with_models=False)
    assert plan.warnings == ["train.iterations: 5 are trained as 1 whole epoch(s) of 20 steps, 20 iterations"]
    assert make_plan(parse_spec(VALID.replace("epochs: 2", "iterations: 40")), with_models=False).warnings == []


@pytest.mark.unit
def test_plan_of_a_cpu_sweep_estimates_cpu_hours(workdir, capsys):
    (workdir / "sweep.yaml").write_text(VALID)
    assert main(["plan", "sweep.yaml", "--cpu-gflops", "10"]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours" not in out and "CPU core-hours (estimate at 10 GFLOP/s per core" in out
    plan = make_plan(parse_spec(VALID), cpu_gflops=10)
    # 2 flops per multiply-add, 3 passes per training image + 1 per val/test image, per epoch
    flops = sum(2 * m["macs"] * (3 * 1258 + 180 + 359) * 2 for m in plan.models.values())
    assert plan.cpu_hours == pytest.approx(flops / 10e9 / 3600)
    assert main(["plan", "sweep.yaml"]) == 0 and "at 25 GFLOP/s" in capsys.readouterr().out
    (workdir / "sweep.yaml").write_text(VALID + "resources: {gpu: 1}\n")
    assert main(["plan", "sweep.yaml"]) == 0 and "GPU-hours (estimate at 5 TFLOP/s" in capsys.readouterr().out


@pytest.mark.unit
def test_model_help_lists_the_variants(capsys):
    for command in ("describe", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "model variants for --model: resnet20, resnet32" in out and "preact1001" in out and "resnet152" in out


def test_model_counts_are_cached_by_full_config_and_code_version(tmp_path, monkeypatch):
    """`plan` keeps torch's counts on disk: the second plan reads them (no torch), the same numbers;
    a cache written by other model code, or one that cannot be written, is not used."""
    import dataclasses
    import os
    import subprocess
    import sys

    from orchestrator.sweepfile.model_counts import CountCache, _count
    from resnet_core.config import ModelConfig

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    plans = [
        subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "plan", str(SWEEPS / "quickstart.yaml"), "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert plans[0] == plans[1] and json.loads(plans[0])["models"]
    cache = CountCache()
    stored = json.loads(cache.path.read_text())
    assert stored["version"] == cache.version and len(stored["counts"]) == 6  # 3 depths, plain and residual
    model = ModelConfig(arch="cifar", depth=32, block="basic", shortcut="A")
    key = next(k for k in stored["counts"] if "depth=32" in k and "residual=True" in k)
    assert stored["counts"][key] == list(dataclasses.astuple(_count(model, 10, 16)))
    cache.path.write_text(json.dumps({"version": "other code", "counts": stored["counts"]}))
    assert CountCache().get(key) is None
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-such-folder")
    fresh = CountCache()
    fresh.put("x", (1, 2, 3))  # cannot be written: kept in memory only
    assert fresh.get("x") == [1, 2, 3]


@pytest.mark.unit
def test_a_searched_folder_is_named_by_its_last_part():
    """Tune refuses a trial folder name with '/' once the sweep has started: a searched
    dataset.root appears in the trial's name as its folder's own name."""
    from orchestrator.sweepfile.space import trial_name

    config = {
        "model.depth": 18,
        "model.arch": "imagenet",
        "dataset.name": "imagefolder",
        "train.lr": 0.1,
        "train.epochs": 1,
    }
    name = trial_name({**config, "dataset.root": "/data/a b/train-set/"}, {"dataset.root": "/data/a b/train-set/"})
    assert name == "resnet18-basic-B-lr0.1-roottrain-set-s0" and "/" not in name
    spaced = trial_name({**config, "dataset.root": "/data/Tiny ImageNet"}, {"dataset.root": "/data/Tiny ImageNet"})
    assert spaced == "resnet18-basic-B-lr0.1-rootTiny_ImageNet-s0"  # a storage URI takes it as it is


@pytest.mark.unit
def test_a_prepared_spec_is_never_changed_in_place(tmp_path, monkeypatch):
    """--smoke-test and a resumed sweep's roots give a new spec; the parsed one stays as read."""
    import pydantic

    from orchestrator.running import sweep

    monkeypatch.chdir(tmp_path)
    parsed = parse_spec((SWEEPS / "quickstart.yaml").read_text(), source="quickstart.yaml")
    before = parsed.spec.model_dump()
    prep = sweep.prepare_sweep(parsed, storage_path=str(tmp_path / "runs"), smoke_test=True)
    assert parsed.spec.model_dump() == before
    assert prep.parsed.spec.train["epochs"] == sweep.SMOKE_EPOCHS != before["train"]["epochs"]
    assert prep.parsed.spec.scheduler.max_t == sweep.SMOKE_EPOCHS
    assert prep.plan.epochs_per_trial == sweep.SMOKE_EPOCHS

    with pytest.raises(pydantic.ValidationError, match="frozen"):
        parsed.spec.name = "other"
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        parsed.spec.scheduler.max_t = 1
    with pytest.raises(AttributeError, match="not changed in place"):
        parsed.spec = prep.parsed.spec
    with pytest.raises(AttributeError):
        prep.name = "other"
    copied = pickle.loads(pickle.dumps(prep))  # a frozen spec still copies and pickles
    assert copied.parsed.spec == prep.parsed.spec and copy.deepcopy(prep.parsed).text == parsed.text

    folder = parse_spec(VALID.replace("name: digits", "name: imagefolder, root: imgs"))
    rooted = sweep._roots_from(folder, str(tmp_path))
    assert folder.spec.dataset["root"] == "imgs"
    assert rooted.spec.dataset["root"] == str(tmp_path / "imgs")
