"""The shipped ImageNet sweeps (2015 Tables 2 and 3): `plan` without the data (ILSVRC-2012's
counts, one warning naming the root), `run` without it (exit 1 naming the root, before Ray), and
the plan's GPU-hours: every pass counted, the throughput assumed, the GPUs of a trial, and the
loader's CPUs against what the GPU trains."""

import json
import os

import pytest

from orchestrator.cli import main
from orchestrator.sweepfile.plan import (
    DECODE_IMAGES_PER_CORE,
    DEFAULT_GPU_TFLOPS,
    IMAGENET_GPU_TFLOPS,
    assumed_gpu_tflops,
    make_plan,
)
from orchestrator.sweepfile.spec import parse_spec
from resnet_core.config import RunConfig
from resnet_core.folders import ILSVRC2012
from tests.support import SWEEPS, cli

IMAGENET_SWEEPS = sorted(SWEEPS.glob("imagenet_*.yaml"))
ROOT = "/data/imagenet"  # where the shipped sweeps expect ILSVRC-2012
needs_no_data = pytest.mark.skipif(os.path.isdir(ROOT), reason=f"{ROOT} exists on this machine")
TRAIN = ILSVRC2012.train - 10 * ILSVRC2012.classes  # 10 images per class held out as val
VAL, TEST = 10 * ILSVRC2012.classes, ILSVRC2012.test


def _plan(capsys, *argv: str) -> tuple[dict, list[str]]:
    """`plan … --json` in this process: the JSON and the warning lines."""
    assert main(["plan", *map(str, argv), "--json"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err.splitlines()


@pytest.mark.unit
def test_the_shipped_imagenet_sweeps_are_the_papers_tables():
    trials = {
        path.stem: [t.config for t in make_plan(parse_spec(path.read_text()), with_models=False).trials]
        for path in IMAGENET_SWEEPS
    }
    assert set(trials) == {"imagenet_plain_vs_residual", "imagenet_shortcuts", "imagenet_depth"}
    nets = {
        name: sorted((c["model.depth"], c["model.residual"], c["model.shortcut"], c["model.block"]) for c in configs)
        for name, configs in trials.items()
    }
    assert nets["imagenet_plain_vs_residual"] == [
        (18, False, "A", "basic"),
        (18, True, "A", "basic"),
        (34, False, "A", "basic"),
        (34, True, "A", "basic"),
    ]
    assert nets["imagenet_shortcuts"] == [(34, True, s, "basic") for s in "ABC"]
    assert nets["imagenet_depth"] == [(d, True, "B", "bottleneck") for d in (50, 101, 152)]
    for config in (c for configs in trials.values() for c in configs):
        run = RunConfig.from_flat(config)  # 2015 §3.4
        assert (run.dataset.name, run.dataset.scale_range, run.dataset.image_size, run.dataset.lighting) == (
            "imagenet",
            (256, 480),
            224,
            0.1,
        )
        assert (run.train.batch_size, run.train.lr, run.train.momentum, run.train.weight_decay, run.model.dropout) == (
            256,
            0.1,
            0.9,
            1e-4,
            0.0,
        )
        assert (run.train.epochs, run.train.milestones, run.model.bottleneck_stride) == (
            90,
            (0.333333, 0.666667),
            "1x1",
        )


@pytest.mark.unit
@needs_no_data
@pytest.mark.parametrize("path", IMAGENET_SWEEPS, ids=lambda p: p.name)
def test_plan_without_the_data_uses_ilsvrc2012_and_says_the_root_is_missing(capsys, path):
    plan, warnings = _plan(capsys, path)
    assert plan["train_images"] == TRAIN and plan["epochs_per_trial"] == 90
    assert warnings == [
        f"warning: dataset.root: {ROOT} is not there: planned with ILSVRC-2012's counts (1,281,167 "
        f"training and 50,000 val images, 1,000 classes); `run` needs {ROOT} with train/ and val/ of "
        f"class folders"
    ]
    assert plan["gpus_per_trial"] == 8 and plan["gpu_hours_by_pass"]["ten_crop"] > 0
    assert not any(m["starved"] for m in plan["loader"]["models"].values())  # the shipped CPUs feed their GPUs


@pytest.mark.unit
def test_plan_warns_only_for_a_missing_part_of_the_root(tmp_path):
    text = (SWEEPS / "imagenet_shortcuts.yaml").read_text().replace(ROOT, str(tmp_path))
    (tmp_path / "train").mkdir()
    assert [w for w in make_plan(parse_spec(text), with_models=False).warnings if "dataset.root" in w] == [
        f"dataset.root: {tmp_path / 'val'} is not there: planned with ILSVRC-2012's counts (1,281,167 training and "
        f"50,000 val images, 1,000 classes); `run` needs {tmp_path} with train/ and val/ of class folders"
    ]
    (tmp_path / "val").mkdir()
    assert not [w for w in make_plan(parse_spec(text), with_models=False).warnings if "dataset.root" in w]


@needs_no_data
def test_run_without_the_data_stops_naming_the_root_before_ray(tmp_path):
    out = cli("run", SWEEPS / "imagenet_depth.yaml", cwd=tmp_path, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert (
        out.stderr == f"error: {ROOT}: no such folder (dataset.root: an ImageFolder root holds train/ and val/, "
        f"each of one folder of images per class)\n"
    )
    assert list(tmp_path.iterdir()) == []  # no ray_results, no mlflow.db


@pytest.mark.unit
def test_gpu_hours_count_training_every_epochs_evaluation_and_the_final_ten_crop(capsys):
    plan, _ = _plan(capsys, SWEEPS / "imagenet_depth.yaml")
    hours = {"train": 0.0, "eval_every_epoch": 0.0, "ten_crop": 0.0}
    for model in plan["models"].values():
        assert model["gpu_tflops"] == IMAGENET_GPU_TFLOPS
        rate = IMAGENET_GPU_TFLOPS * 1e12 * 3600
        # 2 flops per multiply-add: training 3 passes per image, val + test one each per epoch, 10 crops once
        trial = {
            "train": 2 * model["macs"] * 3 * TRAIN * 90 / rate,
            "eval_every_epoch": 2 * model["macs"] * (VAL + TEST) * 90 / rate,
            "ten_crop": 2 * model["macs"] * 10 * TEST / rate,
        }
        for key, value in trial.items():
            hours[key] += value
        assert model["trial_gpu_hours"] == pytest.approx(sum(trial.values()))
        assert model["trial_hours"] == pytest.approx(sum(trial.values()) / 8)  # resources.workers 8 × gpu 1
        assert model["train_images_per_s_per_gpu"] == pytest.approx(IMAGENET_GPU_TFLOPS * 1e12 / (6 * model["macs"]))
    assert plan["gpu_hours_by_pass"] == pytest.approx(hours)
    assert plan["gpu_hours"] == pytest.approx(sum(hours.values()))
    halved, _ = _plan(capsys, SWEEPS / "imagenet_depth.yaml", "--gpu-tflops", "100")
    assert halved["gpu_hours"] == pytest.approx(plan["gpu_hours"] / 2)
    assert {m["gpu_tflops"] for m in halved["models"].values()} == {100}


@pytest.mark.unit
def test_the_throughput_assumed_is_for_imagenet_size_models_only():
    plan = make_plan(parse_spec((SWEEPS / "imagenet_plain_vs_residual.yaml").read_text()), with_models=False)
    assert {assumed_gpu_tflops(RunConfig.from_flat(c)) for c in plan.configs} == {IMAGENET_GPU_TFLOPS}
    cifar = make_plan(parse_spec((SWEEPS / "cifar_depth.yaml").read_text()), with_models=False)
    assert {assumed_gpu_tflops(RunConfig.from_flat(c)) for c in cifar.configs} == {DEFAULT_GPU_TFLOPS}
    small = RunConfig.from_flat({"model.arch": "imagenet", "dataset.name": "digits", "dataset.image_size": 64})
    assert assumed_gpu_tflops(small) == DEFAULT_GPU_TFLOPS  # ImageNet's nets on small images keep a GPU far less busy


@pytest.mark.unit
def test_asha_counts_the_ten_crop_of_the_trials_it_lets_finish():
    text = (
        (SWEEPS / "imagenet_shortcuts.yaml")
        .read_text()
        .replace("scheduler: {name: none}", "scheduler: {name: asha, grace_period: 10, reduction_factor: 3}")
    )
    text = text.replace("model.shortcut: [A, B, C]", "model.shortcut: [A, B, C]\n  seeds: [0, 1, 2]")
    full = make_plan(parse_spec(text.replace("{name: asha, grace_period: 10, reduction_factor: 3}", "{name: none}")))
    asha = make_plan(parse_spec(text))
    # 9 trials: 9 reach epoch 10, 3 reach 30, 1 trains to 90 and tests 10 crops
    assert asha.asha_epochs == 9 * 10 + 3 * 20 + 1 * 60
    assert asha.gpu_hours_by_pass["ten_crop"] == pytest.approx(full.gpu_hours_by_pass["ten_crop"] / 9)
    assert asha.gpu_hours_by_pass["train"] == pytest.approx(full.gpu_hours_by_pass["train"] * 210 / 810)


@pytest.mark.unit
def test_loader_warns_when_the_cpus_would_starve_the_gpu(tmp_path, capsys):
    text = (SWEEPS / "imagenet_shortcuts.yaml").read_text().replace(ROOT, str(tmp_path))
    for part in ("train", "val"):
        (tmp_path / part).mkdir()
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(text.replace("resources: {cpu: 12,", "resources: {cpu: 4,"))
    plan, warnings = _plan(capsys, sweep)
    trains = plan["models"]["resnet34-basic-A"]["train_images_per_s_per_gpu"]
    assert plan["loader"]["models"]["resnet34-basic-A"] == {
        "decoding_cpus": 4,
        "decodes_images_per_s": 4 * DECODE_IMAGES_PER_CORE,
        "gpu_trains_images_per_s": trains,
        "starved": True,
    }
    assert len(warnings) == 3 and warnings[0] == (
        f"warning: resources.cpu: 4 CPU(s) per worker decode ≈ 1,120 images/s (280 per core), below the ≈ {trains:,.0f} "
        f"images/s resnet34-basic-A trains per GPU at 50 TFLOP/s: the GPU would wait for JPEG decoding; give each worker 9 CPUs"
    )
    # fewer decoding processes than CPUs: they are what limits
    sweep.write_text(text.replace("lighting: 0.1", "lighting: 0.1\n  workers: 2"))
    _, warnings = _plan(capsys, sweep)
    assert len(warnings) == 3 and warnings[0].startswith(
        "warning: dataset.workers: 2 CPU(s) per worker decode ≈ 560 images/s"
    )
    # a faster machine's measured rate (`python bench loader`): enough
    plan, warnings = _plan(capsys, sweep, "--decode-rate", "2000")
    assert warnings == [] and plan["loader"]["decode_images_per_core"] == 2000


@pytest.mark.unit
def test_plan_prints_the_estimate_and_what_it_assumes(tmp_path, capsys):
    assert main(["plan", str(SWEEPS / "imagenet_depth.yaml")]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours (estimate at 50 TFLOP/s sustained per GPU): " in out
    assert "+ val 10,000 + test 50,000 centre crops every epoch " in out and "+ final 10-crop test " in out
    assert "50 TFLOP/s per GPU: assumed for ImageNet-size models" in out and "--gpu-tflops sets it" in out
    assert "one trial on 8 GPUs (resources.workers 8 × gpu 1, 32 images per GPU per step): " in out
    assert "(resnet152-bottleneck-B the longest)" in out
    assert (
        "loader: 12 CPUs per worker decode ≈ 3,360 images/s (280 per core); a GPU trains ≈ 739–2,160 images/s at "
        "the rate above (resnet50-bottleneck-B the most): enough"
    ) in out
    assert main(["plan", str(SWEEPS / "imagenet_depth.yaml"), "--gpu-tflops", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --gpu-tflops: 0 must be a positive number"
