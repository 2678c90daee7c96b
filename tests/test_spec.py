"""[3/8] Sweep files: validation errors name the field and line, exit 2, start nothing."""
import json

import pytest

from orchestrator.cli import main
from orchestrator.space import asha_expected_epochs, make_plan
from orchestrator.spec import SchedulerSpec, parse_spec
from tests.conftest import SWEEPS, cli

VALID = """\
name: t
dataset: {name: digits, image_size: 16}
model: {arch: cifar, block: basic, shortcut: A}
train: {epochs: 2, batch_size: 64}
search:
  algorithm: grid
  space:
    model.depth: [8, 14]
"""

# (description, sweep text, words the one-line error must contain, YAML line or None)
MALFORMED = [
    ("syntax error", "name: t\nmodel: {arch: cifar\ntrain: {}\n", ["YAML syntax error"], 3),
    ("not a mapping", "- a\n- b\n", ["mapping"], 1),
    ("missing name", "model: {depth: 20}\n", ["name", "required"], None),
    ("unknown top-level key", VALID + "modle: {}\n", ["modle", "did you mean model"], 9),
    ("unknown model key", VALID.replace("block: basic", "blok: basic"), ["model.blok", "did you mean block"], 3),
    ("wrong type", VALID.replace("batch_size: 64", "batch_size: many"), ["train.batch_size", "integer"], 4),
    ("depth 21 with basic blocks", VALID.replace("[8, 14]", "[8, 21]"), ["search.space.model.depth", "21", "6n+2"], 8),
    ("bottleneck with a basic depth", VALID.replace("block: basic", "block: bottleneck").replace("[8, 14]", "[14]"), ["search.space.model.depth", "9n+2"], 8),
    ("ImageNet bottleneck at depth 20", VALID.replace("arch: cifar, block: basic", "arch: imagenet, block: bottleneck").replace("[8, 14]", "[20]"), ["model.depth", "50, 101, 152"], 8),
    ("negative lr", VALID.replace("epochs: 2", "epochs: 2, lr: -0.1"), ["train.lr", "-0.1"], 4),
    ("unknown scheduler", VALID + "scheduler: {name: hyperband}\n", ["scheduler.name", "hyperband", "asha"], 9),
    ("more GPUs than any node", VALID + "resources: {gpu: 64}\n", ["resources.gpu", "64"], None),
    ("fractional multi-GPU", VALID + "resources: {gpu: 1.5}\n", ["resources.gpu", "whole number"], 9),
    ("zero CPUs", VALID + "resources: {cpu: 0}\n", ["resources.cpu", "greater than 0"], 9),
    ("unknown search algorithm", VALID.replace("algorithm: grid", "algorithm: bayes"), ["search.algorithm", "bayes", "optuna"], 6),
    ("unknown space key", VALID.replace("model.depth: [8, 14]", "model.depht: [8, 14]"), ["model.depht", "did you mean model.depth"], 8),
    ("distribution in a grid", VALID + "    train.lr: {loguniform: [0.01, 0.1]}\n", ["search.space.train.lr", "loguniform", "random or optuna"], 9),
    ("loguniform from zero", VALID.replace("grid", "random") + "    train.lr: {loguniform: [0, 0.1]}\n", ["train.lr", "positive"], 9),
    ("quoted bounds", VALID.replace("grid", "random") + "    train.lr: {loguniform: ['1e-3', 0.1]}\n", ["train.lr", "must be two numbers"], 9),
    ("bad bounds", VALID.replace("grid", "random") + "    train.lr: {uniform: [0.1, 0.01]}\n", ["train.lr", "low < high"], 9),
    ("bad value in space", VALID + "    train.schedule: [multistep, linear]\n", ["search.space.train.schedule", "'linear'", "cosine"], 9),
    ("unknown metric", VALID + "metric: {name: accuracy}\n", ["metric.name", "accuracy", "val_error"], 9),
    ("bad metric mode", VALID + "metric: {mode: minimize}\n", ["metric.mode", "minimize"], 9),
    ("unknown dataset", VALID.replace("name: digits", "name: imagenet"), ["dataset.name", "imagenet", "cifar10"], 2),
    ("unknown precision", VALID.replace("batch_size: 64", "batch_size: 64, precision: fp8"), ["train.precision", "fp8", "bf16"], 4),
    ("name with a slash", VALID.replace("name: t", "name: a/b"), ["name", "a/b"], 1),
    ("repeated seeds", VALID + "  seeds: [0, 0]\n", ["search.seeds", "distinct"], 9),
    ("num_samples on a grid", VALID + "  num_samples: 3\n", ["search.num_samples", "seeds"], 9),
    ("exclude on an unknown key", VALID + "  exclude:\n    - {model.dpth: 8}\n", ["model.dpth"], 10),
    ("everything excluded", VALID + "  exclude:\n    - {model.block: basic}\n", ["no trials left"], None),
    ("over the trial budget", VALID + "budget: {max_trials: 1}\n", ["budget.max_trials", "2 trials"], 9),
    ("unreachable MLflow server", VALID + "tracking: {tracking_uri: 'http://127.0.0.1:9'}\n", ["tracking.tracking_uri", "no MLflow server"], None),
    ("zero_init_last crossed with plain nets", VALID.replace("shortcut: A}", "shortcut: A, zero_init_last: true}") + "    model.residual: [true, false]\n", ["model.zero_init_last", "residual: true", "model.residual=False"], 3),
    ("ASHA max_t below the epochs", VALID + "scheduler: {name: asha, max_t: 1}\n", ["scheduler.max_t", "1 is below the 2 epochs", "leave it out"], 9),
    ("duplicate key", VALID + "train: {epochs: 3}\n", ["duplicate key 'train'"], 9),
    ("uniform on an int", VALID.replace("grid", "random") + "    train.epochs: {uniform: [1, 3]}\n", ["train.epochs", "not a real number"], 9),
    ("uniform on a bool", VALID.replace("grid", "random") + "    model.residual: {uniform: [0, 1]}\n", ["model.residual", "not a real number"], 9),
    ("nested choice", VALID.replace("grid", "random") + "    train.lr: {choice: {uniform: [0.01, 0.1]}}\n", ["train.lr", "choice takes a list"], 9),
    ("model.n with a fixed depth", VALID.replace("block: basic, ", "block: basic, depth: 56, ").replace("model.depth: [8, 14]", "model.n: [1, 2]"), ["model.n", "sets the depth"], 8),
    ("seeds with optuna", VALID.replace("grid", "optuna") + "  seeds: [0, 1]\n", ["search.seeds", "Optuna"], 9),
    ("exclude value of the wrong type", VALID + "  exclude:\n    - {model.depth: deep}\n", ["search.exclude.0.model.depth", "'deep'"], 10),
    ("classes disagree with the data", VALID.replace("shortcut: A}", "shortcut: A, num_classes: 5}"), ["model.num_classes", "5", "10 classes"], 3),
    ("both fixed and searched", VALID.replace("block: basic, ", "block: basic, depth: 8, "), ["model.depth", "both fixed"], 8),
]


@pytest.mark.parametrize("text,words,line", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_sweep_exits_2_with_one_line_and_starts_nothing(workdir, capsys, text, words, line):
    import ray

    (workdir / "sweep.yaml").write_text(text)
    assert main(["run", "sweep.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    for word in words:
        assert word in err, err
    if line is not None:
        assert f"sweep.yaml:{line}:" in err, err
    assert not ray.is_initialized()
    assert sorted(p.name for p in workdir.iterdir()) == ["sweep.yaml"]  # nothing written


def test_catalogue_is_large():
    assert len(MALFORMED) >= 20


@pytest.mark.parametrize("args,words", [
    (["run", "missing.yaml"], ["no sweep file at missing.yaml"]),
    (["run"], ["the following arguments are required"]),
    (["run", "sweep.yaml", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["plan", "."], ["(it is a folder)"]),
    (["run", "sweep.yaml", "--address", "head-without-port"], ["--address", "host:port, ray://host:port or auto"]),
    (["run", "sweep.yaml", "--storage-path", "s3://KEY:SECRET@bucket/x"], ["storage_path", "credentials"]),
    (["run", "sweep.yaml", "--storage-path", "s3://bucket/x?endpoint_override=h"], ["storage_path", "AWS_ENDPOINT_URL"]),
])
def test_bad_command_lines_exit_2_with_one_line(workdir, capsys, args, words):
    (workdir / "sweep.yaml").write_text(VALID)
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse exits by itself
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(w in err for w in words), err


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_plan_succeeds_on_every_shipped_sweep_without_ray(tmp_path, path):
    out = cli("plan", path, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["num_trials"] >= 1 and plan["total_epochs"] >= plan["num_trials"]
    assert plan["models"] and all(m["params"] > 0 and m["macs"] > 0 for m in plan["models"].values())
    if plan["algorithm"] != "optuna":
        assert len(plan["trials"]) == plan["num_trials"]
        assert len({t["name"] for t in plan["trials"]}) == plan["num_trials"]
    assert list(tmp_path.iterdir()) == []  # plan writes nothing and starts no Ray


def test_cifar_depth_plan_is_table6():
    plan = make_plan(parse_spec((SWEEPS / "cifar_depth.yaml").read_text()))
    depths = sorted({t.config["model.depth"] for t in plan.trials})
    assert depths == [20, 32, 44, 56, 110] and plan.num_trials == 10
    assert plan.epochs_per_trial == 182  # 64k iterations at 352 steps per epoch


def test_model_n_derives_depth_per_block():
    text = VALID.replace("model.depth: [8, 14]", "model.n: [2]\n    model.block: [basic, bottleneck]")
    text = text.replace("block: basic, ", "")
    plan = make_plan(parse_spec(text))
    assert sorted(t.config["model.depth"] for t in plan.trials) == [14, 20]


def test_random_search_is_seeded_and_excludes():
    text = VALID.replace("grid", "random") + "  num_samples: 6\n  seeds: [0, 1]\n  exclude:\n    - {model.depth: 14}\n"
    text = text.replace("[8, 14]", "[8, 14]\n    train.lr: {loguniform: [0.01, 0.5]}")
    a, b = (make_plan(parse_spec(text), with_models=False) for _ in range(2))
    assert [t.config for t in a.trials] == [t.config for t in b.trials]
    assert all(t.config["model.depth"] == 8 for t in a.trials)
    assert {t.config["train.seed"] for t in a.trials} == {0, 1}


def test_space_values_are_converted_and_excludes_see_defaults():
    text = VALID.replace("[8, 14]", "['8', '14']").replace("block: basic, ", "") + "    model.residual: [true, false]\n"
    text += "  exclude:\n    - {model.block: basic, model.residual: false, model.depth: 14}\n"  # block: the default
    plan = make_plan(parse_spec(text), with_models=False)
    assert sorted((t.config["model.depth"], t.config["model.residual"]) for t in plan.trials) == [(8, False), (8, True), (14, True)]


def test_plan_counts_models_at_the_data_size_and_classes():
    text = VALID.replace("arch: cifar, block: basic, shortcut: A", "arch: imagenet, block: basic, shortcut: B").replace("[8, 14]", "[18]")
    plan = make_plan(parse_spec(text))
    (model,) = plan.models.values()
    assert model["macs"] < 0.05e9  # 16-px digits, not 224 px
    assert model["params"] == 11_689_512 - 1000 * 512 - 1000 + 10 * 512 + 10  # a 10-way classifier


def test_plan_counts_each_model_configuration_not_each_name():
    """Models with one short name but another bottleneck_stride or input size cost differently."""
    text = VALID.replace("arch: cifar, block: basic, shortcut: A", "arch: imagenet, block: bottleneck, depth: 50").replace(
        "name: digits, image_size: 16", "name: digits").replace("model.depth: [8, 14]", "model.bottleneck_stride: [1x1, 3x3]\n    dataset.image_size: [32, 64]")
    plan = make_plan(parse_spec(text))
    assert len(plan.models) == 4 and len(set(plan.model_of)) == 4
    macs = {t.varying["model.bottleneck_stride"] + str(t.varying["dataset.image_size"]): plan.models[plan.model_of[t.index]]["macs"]
            for t in plan.trials}
    assert macs["1x132"] < macs["3x332"] and 3.9 < macs["1x164"] / macs["1x132"] < 4.1
    single = [make_plan(parse_spec(text.replace("[1x1, 3x3]", f"[{s}]").replace("[32, 64]", f"[{px}]"))).gpu_hours
              for s in ("1x1", "3x3") for px in (32, 64)]
    assert plan.gpu_hours == pytest.approx(sum(single))


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
    assert plan.num_trials == 2 and all(c["train.weight_decay"] == 5e-4 and 1e-3 <= c["train.lr"] <= 1e-1 for c in plan.configs)


def test_asha_budget_estimate():
    sched = SchedulerSpec(name="asha", grace_period=1, reduction_factor=3)
    # 27 trials: 27×1 + 9×2 + 3×6 + 1×(27−9) epochs with rungs 1, 3, 9 and max_t 27
    assert asha_expected_epochs(27, 27, sched) == 27 * 1 + 9 * 2 + 3 * 6 + 1 * 18
