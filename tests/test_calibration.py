"""`plan --calibrate`: the wall-time prediction's arithmetic with made-up rates (trials in order
on the machine's slots, sharing its cores or GPUs, ASHA's epochs, arrays, data-parallel
workers, Optuna), the calibration cache, and one short real measurement."""

import json

import pytest
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.sweepfile import calibration as C
from orchestrator.sweepfile.plan import asha_expected_epochs, asha_trial_epochs, make_plan, plan_summary
from orchestrator.sweepfile.spec import SchedulerSpec, parse_spec
from orchestrator.vocabulary import TAG_PREDICTED_WALL, TAG_ROLE, TAG_WALL
from resnet_core.config import RunConfig, split_sizes
from tests.support import SWEEPS, cli

QUICKSTART = (SWEEPS / "quickstart.yaml").read_text()
TRAIN_S, EVAL_S, SETUP_S, CHECKPOINT_S = 0.002, 0.0005, 1.5, 0.05


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A calibration cache of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fresh = C.CalibrationCache()
    monkeypatch.setattr(C, "CALIBRATION_CACHE", fresh)
    return fresh


def _plan(text: str, **sets):
    for key, value in sets.items():
        text += f"\n{key}: {json.dumps(value)}"
    return make_plan(parse_spec(text), with_models=False)


def _rates(plan, *, cpus=2, gpus=0, train_s=TRAIN_S) -> dict:
    """Made-up rates for every Tune trial of ``plan``, as the cache holds them."""
    rate = dict(
        device="cpu",
        speed="fp32 fused-sgd",
        threads=1,
        members=1,
        setup_s=SETUP_S,
        train_s_per_image=train_s,
        eval_s_per_image=EVAL_S,
        checkpoint_s=CHECKPOINT_S,
        steps=20,
        eval_images=256,
        cpus=cpus,
        gpus=gpus,
        cpu_name="test CPU",
        gpu_name=None,
        host="test",
    )
    return {C.calibration_key(C._unit_runs(plan, unit), plan.spec): rate for unit in C._units(plan)}


def _sharing(running: int, *, threads: int = 1, cpus: float = 2) -> float:
    """The slowdown of ``running`` trials at once and the driver on ``cpus`` free cores."""
    return max(1.0, (running * threads + C.DRIVER_CORES) / cpus)


def _one_trial_s(plan, epochs: int, *, slowdown: float = 1.0, workers: int = 1, train_s=TRAIN_S) -> float:
    train, val, test = split_sizes(RunConfig.from_flat(plan.configs[0]).dataset)
    compute = epochs * ((train * train_s + (val + test) * EVAL_S) / workers + CHECKPOINT_S)
    if epochs == plan.epochs_per_trial:
        compute += val * EVAL_S / workers  # the layer responses at the end
    return SETUP_S + C.TRIAL_START_S + epochs * C.EPOCH_S + compute * slowdown


@pytest.mark.unit
def test_trials_start_in_order_as_slots_free_up():
    assert C.schedule([10, 10, 10], 2) == 20
    assert C.schedule([30, 10, 10, 10], 2) == 30  # the short ones share the other slot
    assert C.schedule([10, 10, 30], 2) == 40  # in plan order: the long one starts last
    assert C.schedule([5, 7], 0) == 7  # no limit: all at once
    assert C.schedule([4, 4, 4], 1) == 12


@pytest.mark.unit
def test_quickstart_prediction_from_rates():
    plan = _plan(QUICKSTART)
    got = C.predict(plan, _rates(plan))
    assert got["calibration"]["slowdown"] == pytest.approx(_sharing(2))  # two trials and the driver, two cores
    trial = _one_trial_s(plan, 15, slowdown=_sharing(2))
    assert got["predicted_trial_s"] == pytest.approx({t.name: trial for t in plan.trials})
    assert got["calibration"]["concurrency"] == 2
    assert got["predicted_wall_s"] == pytest.approx(C.SWEEP_START_S + 3 * trial + C.SWEEP_END_S)
    model = got["calibration"]["models"]["resnet20-basic-A"]
    assert model["train_images_per_s"] == pytest.approx(1 / TRAIN_S) and model["batch_size"] == 32
    assert any("images/s" in line for line in C.summary_lines(got))


@pytest.mark.unit
def test_trials_beyond_the_cores_share_them():
    half = _plan(QUICKSTART.replace("resources: {cpu: 1}", "resources: {cpu: 0.5}"))
    got = C.predict(half, _rates(half))
    # 4 trials at once on 2 cores, one thread each: each computes about half as fast.
    assert got["calibration"]["concurrency"] == 4 and got["calibration"]["slowdown"] == pytest.approx(_sharing(4))
    trial = _one_trial_s(half, 15, slowdown=_sharing(4))
    assert got["predicted_wall_s"] == pytest.approx(C.SWEEP_START_S + 2 * trial + C.SWEEP_END_S)
    one = _plan(QUICKSTART, max_concurrent=1)
    got = C.predict(one, _rates(one))
    trial = _one_trial_s(one, 15, slowdown=_sharing(1))
    assert got["predicted_wall_s"] == pytest.approx(C.SWEEP_START_S + 6 * trial + C.SWEEP_END_S)


@pytest.mark.unit
def test_other_work_on_the_machine_gives_a_second_figure():
    plan = _plan(QUICKSTART)
    alone = C.predict(plan, _rates(plan))
    busy = C.predict(plan, {key: {**rate, "other_work_cores": 1.2} for key, rate in _rates(plan).items()})
    assert busy["predicted_wall_s"] == alone["predicted_wall_s"]  # the sweep has the machine to itself
    # If the other work goes on: the trials and the driver get what it leaves (at least a trial's thread).
    trial = _one_trial_s(plan, 15, slowdown=_sharing(2, cpus=1))
    assert busy["calibration"]["wall_s_if_other_work_goes_on"] == pytest.approx(
        C.SWEEP_START_S + 3 * trial + C.SWEEP_END_S
    )
    assert any("other work kept 1.2 of the 2 cores busy" in line for line in C.summary_lines(busy))
    assert not any("other work" in line for line in C.summary_lines(alone))


@pytest.mark.unit
def test_trials_sharing_a_gpu_share_its_speed():
    plan = _plan(QUICKSTART.replace("resources: {cpu: 1}", "resources: {cpu: 1, gpu: 0.5}"))
    got = C.predict(plan, _rates(plan, cpus=8, gpus=1))
    assert got["calibration"]["concurrency"] == 2 and got["calibration"]["slowdown"] == 2.0


@pytest.mark.unit
def test_asha_trials_train_their_expected_epochs():
    rungs = SchedulerSpec(name="asha", grace_period=2, reduction_factor=3)
    assert asha_trial_epochs(6, 15, rungs) == [15, 6, 2, 2, 2, 2]
    assert sum(asha_trial_epochs(9, 15, rungs)) == asha_expected_epochs(9, 15, rungs)
    plan = _plan(QUICKSTART.replace("scheduler: {name: none}", "scheduler: {name: asha, grace_period: 2}"))
    got = C.predict(plan, _rates(plan))
    assert list(got["predicted_trial_s"].values()) == pytest.approx(
        [_one_trial_s(plan, e, slowdown=_sharing(2)) for e in (15, 6, 2, 2, 2, 2)]
    )


@pytest.mark.unit
def test_an_array_is_one_trial_for_all_its_members():
    text = QUICKSTART.replace("model.residual: [true, false]", "train.lr: [0.1, 0.05, 0.02]").replace(
        "model.depth: [20, 32, 56]", "model.depth: [20]"
    )
    plan = _plan(text.replace("resources: {cpu: 1}", "resources: {cpu: 1, array: 3}"))
    rates = _rates(plan)
    assert len(rates) == 1  # one array of three: one model measured
    got = C.predict(plan, rates)
    trial = _one_trial_s(plan, 15, slowdown=_sharing(1))  # the one array runs alone
    assert list(got["predicted_trial_s"].values()) == pytest.approx([trial] * 3)
    assert got["predicted_wall_s"] == pytest.approx(C.SWEEP_START_S + trial + C.SWEEP_END_S)


@pytest.mark.unit
def test_data_parallel_workers_each_train_their_share():
    plan = _plan(QUICKSTART.replace("resources: {cpu: 1}", "resources: {cpu: 1, workers: 2}"))
    got = C.predict(plan, _rates(plan))
    assert got["calibration"]["concurrency"] == 1
    assert got["calibration"]["models"]["resnet20-basic-A"]["batch_size"] == 16  # each worker's share, measured
    assert got["predicted_trial_s"]["resnet20-basic-A-lr0.1-s0"] == pytest.approx(
        _one_trial_s(plan, 15, workers=2, slowdown=_sharing(1, threads=2))
    )


@pytest.mark.unit
def test_optuna_trials_stand_for_its_probe_points():
    text = QUICKSTART.replace("algorithm: grid", "algorithm: optuna\n  num_samples: 5").replace(
        "model.residual: [true, false]", "train.lr: {loguniform: [0.01, 0.2]}"
    )
    plan = _plan(text.replace("model.depth: [20, 32, 56]", "model.depth: [20]"))
    got = C.predict(plan, _rates(plan))
    assert list(got["predicted_trial_s"]) == ["resnet20-basic-A"]  # by model: the trials are drawn later
    trial = _one_trial_s(plan, 15, slowdown=_sharing(2))
    assert got["predicted_wall_s"] == pytest.approx(C.SWEEP_START_S + 3 * trial + C.SWEEP_END_S)


@pytest.mark.unit
def test_run_predicts_from_the_cache_and_plan_json_carries_it(cache):
    plan = _plan(QUICKSTART)
    assert C.predicted(plan) is None  # nothing measured here yet
    for key, rate in _rates(plan).items():
        cache.put(key, rate)
    plan.prediction = C.predicted(plan)
    assert plan.prediction == C.predict(plan, _rates(plan))
    summary = plan_summary(plan)
    assert summary["predicted_wall_s"] == plan.prediction["predicted_wall_s"]
    assert set(summary["predicted_trial_s"]) == {t.name for t in plan.trials}
    assert "predicted_wall_s" not in plan_summary(_plan(QUICKSTART))  # only when predicted


@pytest.mark.unit
def test_calibrating_a_small_model_measures_it_and_caches_the_rate(cache):
    text = "name: tiny\ndataset: {name: digits, image_size: 8}\nmodel: {depth: 8}\ntrain: {epochs: 1, batch_size: 64}\n"
    plan = _plan(text)
    got = C.calibrate(plan)
    (model,) = got["calibration"]["models"].values()
    assert model["device"] == "cpu" and model["threads"] == 1 and model["steps_timed"] >= 3
    assert model["train_images_per_s"] > 0 and model["eval_images_per_s"] > 0 and model["setup_s"] > 0
    assert got["predicted_wall_s"] > got["predicted_trial_s"]["resnet8-basic-A-lr0.1-s0"] > 0
    assert C.CalibrationCache().path.is_file() and C.predicted(plan) == got


TINY = "name: tiny\ndataset: {name: digits, image_size: 8}\nmodel: {depth: 8}\ntrain: {epochs: 1, batch_size: 64}\n"


def test_plan_calibrate_cli(tmp_path, cache, monkeypatch, capsys):
    """`plan --calibrate` as JSON (the command as a process) and as text (in-process, the same
    command line); with --extend it is refused."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = cli("plan", "tiny.yaml", "--calibrate", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["predicted_wall_s"] > 0 and list(plan["predicted_trial_s"]) == ["resnet8-basic-A-lr0.1-s0"]
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "tiny.yaml", "--calibrate"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "images/s" in text and "predicted wall time" in text
    assert main(["plan", "tiny.yaml", "--calibrate", "--extend"]) == 2
    assert "--calibrate" in capsys.readouterr().err


@pytest.mark.slow
def test_run_after_plan_calibrate_says_predicted_against_took(tmp_path):
    """`run` finds the rates `plan --calibrate` measured: the prediction against what it took, in
    its last line, on the parent run and in the report."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = cli("plan", "tiny.yaml", "--calibrate", "--json", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    ran = cli("run", "tiny.yaml", cwd=tmp_path, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr
    last = ran.stdout.strip().splitlines()[-1]
    assert last.startswith("wall time: predicted ") and ", took " in last, ran.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], f"tags.`{TAG_ROLE}` = 'sweep'"
    )
    predicted, took = (float(parent.data.tags[tag]) for tag in (TAG_PREDICTED_WALL, TAG_WALL))
    assert predicted == pytest.approx(plan["predicted_wall_s"], abs=0.1) and 0 < took < 300
    assert "Wall time of `run`: predicted" in (tmp_path / "reports" / "tiny" / "index.md").read_text()
