"""The sweep file as the user's tool: `--set KEY=VALUE` overrides, sweeps that grow (`run
--extend`), and the environment record of the parent run. Unit tests of the override and growth
rules, then real sweeps through the CLI."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.sweepfile.growth import EarlierTrial, plan_growth, trial_identity
from orchestrator.sweepfile.space import OPTUNA_STUDY, optuna_warm_start
from orchestrator.sweepfile.spec import SpecError, load_spec, parse_spec
from tests.support import SWEEPS, child_runs, cli, ctrl_c_when, migrated_store, tune_records

GROW = """\
name: grow
dataset: {name: digits, image_size: 8, train_limit: 256, eval_limit: 128}
model: {arch: cifar, block: basic, shortcut: A}
train: {epochs: 2, batch_size: 64}
search:
  algorithm: grid
  space:
    model.depth: DEPTHS
  seeds: SEEDS
resources: {cpu: 1}
"""


def grow_file(depths: list[int], seeds: list[int]) -> str:
    return GROW.replace("DEPTHS", str(depths)).replace("SEEDS", str(seeds))


# --- --set (unit) -------------------------------------------------------------------------------


@pytest.mark.unit
def test_set_changes_the_file_as_if_written_there():
    parsed = load_spec(SWEEPS / "quickstart.yaml", ["train.epochs=2", "search.space.model.depth=[20]", "train.lr=1e-3"])
    assert parsed.spec.train["epochs"] == 2 and parsed.spec.train["lr"] == 0.001
    assert parsed.spec.search.space["model.depth"] == [20]
    # The resolved file, saved with the sweep, is the same sweep when read back, and names the overrides.
    text = parsed.resolved_text()
    assert text.startswith("# ") and "--set train.epochs=2" in text.splitlines()[0]
    assert parse_spec(text).spec == parsed.spec
    assert load_spec(SWEEPS / "quickstart.yaml").resolved_text() == (SWEEPS / "quickstart.yaml").read_text()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("train.epoch=2", "--set train.epoch: unknown key 'epoch'; did you mean epochs?"),
        ("train.epochs=abc", "--set train.epochs: 'abc': input should be a valid integer"),
        ("train.epochs", "--set train.epochs: 'train.epochs' is not KEY=VALUE"),
        ("search.space.model.depth=[20, x]", "--set search.space.model.depth: 'x': input should be a valid integer"),
        ("name.x=1", "--set name.x: name is 'quickstart' in the file, not a section with keys"),
        ("resources.gpu=3", "--set resources.gpu: 3: Value error, a worker process trains on one device"),
        ("train.lr=[1", "--set train.lr: '[1' is not a YAML value"),
    ],
)
def test_a_bad_set_names_the_flag(given, says):
    with pytest.raises(SpecError) as err:
        load_spec(SWEEPS / "quickstart.yaml", [given])
    assert str(err.value).startswith(says), str(err.value)
    assert "\n" not in str(err.value)


# --- growth (unit) ------------------------------------------------------------------------------


def _configs(file_text: str) -> list[dict]:
    from orchestrator.sweepfile.plan import make_plan

    return [t.config for t in make_plan(parse_spec(file_text), with_models=False).trials]


@pytest.mark.unit
def test_growth_keeps_what_is_done_and_trains_only_the_new():
    first = _configs(grow_file([8], [0]))
    earlier = [EarlierTrial(first[0], finished=True)]
    grown = _configs(grow_file([8, 14], [0, 1]))
    growth = plan_growth(earlier, grown, samples=4, before={}, now={})
    assert (growth.done, growth.unfinished, growth.new_samples, growth.removed) == (1, 0, 3, set())
    assert trial_identity(first[0]) not in {trial_identity(c) for c in growth.new}
    # An unfinished trial continues; a trial the file no longer has is removed.
    shrunk = plan_growth(
        [EarlierTrial(first[0], finished=False)], _configs(grow_file([14], [0])), samples=1, before={}, now={}
    )
    assert (shrunk.done, shrunk.unfinished, shrunk.new_samples, len(shrunk.removed)) == (0, 0, 1, 1)


@pytest.mark.unit
def test_a_changed_fixed_setting_makes_every_trial_new_and_says_which():
    earlier = [EarlierTrial(c, finished=True) for c in _configs(grow_file([8, 14], [0]))]
    longer = grow_file([8, 14], [0]).replace("epochs: 2", "epochs: 3")
    growth = plan_growth(earlier, _configs(longer), samples=2, before={"train.epochs": 2}, now={"train.epochs": 3})
    assert (growth.done, growth.new_samples, len(growth.removed)) == (0, 2, 2)
    assert growth.changed_line() == "the file changes fixed settings (train.epochs 2 → 3): every trial of it is new"


@pytest.mark.unit
def test_optuna_growth_draws_the_difference_and_the_sampler_is_told_the_finished_trials():
    earlier = [
        EarlierTrial({"train.lr": lr}, finished=True, result={"val_error": e}) for lr, e in [(0.1, 0.5), (0.2, 0.4)]
    ]
    growth = plan_growth(earlier, None, samples=8, before={"s": 1}, now={"s": 1})
    assert (growth.done, growth.new_samples) == (2, 6)
    parsed = parse_spec(
        "name: o\ndataset: {name: digits}\nsearch:\n  algorithm: optuna\n  num_samples: 8\n"
        "  space: {train.lr: {loguniform: [0.01, 0.5]}}\n"
    )
    storage, told = optuna_warm_start(
        parsed, [(t.config, t.result["val_error"]) for t in earlier] + [({"train.lr": 9.0}, 0.1)]
    )
    import optuna

    study = optuna.load_study(study_name=OPTUNA_STUDY, storage=storage)
    assert told == 2  # the draw outside the file's space is left out
    assert [(t.params["train.lr"], t.value) for t in study.trials] == [(0.1, 0.5), (0.2, 0.4)]


# --- real sweeps --------------------------------------------------------------------------------


def _runs(folder: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    return client, *child_runs(client, experiment)


def test_set_then_extend_trains_only_the_new_trials_under_one_parent_run(tmp_path, monkeypatch, capsys):
    """Must show 1 and 2 (the grid half) and 3: a sweep run with `--set`, its file edited to two
    seeds and one more depth, `run --extend`: the counts first, only the new trials trained, one
    parent run holding the overrides and the environment record, the first trial's run untouched."""
    work = tmp_path / "a folder with spaces"
    work.mkdir()
    (work / "grow.yaml").write_text(grow_file([8], [0]))
    migrated_store(work)
    out = cli("run", "grow.yaml", "--set", "train.epochs=1", "--set", "dataset.eval_limit=64", "--no-report", cwd=work)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, parents, children = _runs(work, "grow")
    assert len(parents) == 1 and len(children) == 1
    (parent,) = parents
    assert json.loads(parent.data.tags["resnet_sweep.overrides"]) == ["train.epochs=1", "dataset.eval_limit=64"]
    assert children[0].data.params["train.epochs"] == "1"
    saved = (work / "ray_results" / "grow" / "sweep.yaml").read_text()
    assert saved.startswith("# grow.yaml as run with --set train.epochs=1 --set dataset.eval_limit=64")
    assert (
        client.download_artifacts(parent.info.run_id, "sweep.yaml", str(tmp_path))
        and parse_spec(saved).spec.train["epochs"] == 1
    )
    # How the run was made (must show 3): versions, devices, commit, on the parent run.
    record = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "environment.json", str(tmp_path))).read_text()
    )
    assert record["packages"]["torch"] and record["packages"]["ray"] and record["nodes"]
    assert parent.data.tags["resnet_sweep.env.torch"] == record["packages"]["torch"]
    first_end = children[0].info.end_time

    # The edited file: two seeds, one more depth (the same overrides, so the same fixed settings).
    (work / "grow.yaml").write_text(grow_file([8, 14], [0, 1]))
    sets = ["--set", "train.epochs=1", "--set", "dataset.eval_limit=64"]
    monkeypatch.chdir(work)  # plan and status in-process: the same command lines, no interpreter each
    assert main(["plan", "grow.yaml", "--extend", *sets, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) | {"folder": None} == {
        "name": "grow",
        "exists": True,
        "folder": None,
        "done": 1,
        "unfinished": 0,
        "new": 3,
        "removed": 0,
        "changed": [],
    }
    out = cli("run", "grow.yaml", "--extend", *sets, cwd=work)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    first_line = out.stdout.splitlines()[0]
    assert (
        first_line
        == "extending grow: 1 done (kept, not trained again), 0 unfinished (continue from their checkpoints), 3 new"
    )
    assert len(re.findall(r"^\[\d\d:\d\d\] completed", out.stdout, re.M)) == 3  # only the new ones trained
    client, parents, children = _runs(work, "grow")
    assert len(parents) == 1 and len(children) == 4
    assert len({c.data.tags["resnet_sweep.trial_id"] for c in children}) == 4
    assert len({(c.data.params["model.depth"], c.data.params["train.seed"]) for c in children}) == 4  # no duplicate
    untouched = [c for c in children if c.info.end_time == first_end]
    assert len(untouched) == 1 and untouched[0].data.params["model.depth"] == "8"
    assert main(["status", "grow", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 4
    assert (work / "reports" / "grow" / "index.md").is_file()


@pytest.mark.slow  # the default suite grows a grid sweep (above); this adds Ctrl-C, resume and Optuna
def test_ctrl_c_during_an_extension_then_resume_finishes_it_and_optuna_grows_warm(tmp_path):
    (tmp_path / "grow.yaml").write_text(grow_file([8], [0]))
    assert cli("run", "grow.yaml", "--no-report", cwd=tmp_path).returncode == 0
    (tmp_path / "grow.yaml").write_text(grow_file([8, 14, 20], [0, 1]))
    out = ctrl_c_when("run", "grow.yaml", "--extend", "--no-report", cwd=tmp_path, printed=r"^\[\d\d:\d\d\] epoch +1/2")
    assert ctrl_c_when.returncode == 130 and "interrupted:" in out, out[-3000:]
    out = cli("resume", "grow", "--no-report", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, parents, children = _runs(tmp_path, "grow")
    assert len(parents) == 1 and len(children) == 6 and parents[0].data.tags["status"] == "completed"
    for child in children:  # every epoch once, no run twice
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_error")] == [1, 2]
        assert child.data.tags["status"] == "completed"

    # Optuna: 2 draws, then 4; the sampler of the second stage holds the first 2 (a warm start).
    optuna_file = (
        "name: og\ndataset: {name: digits, image_size: 8, train_limit: 256, eval_limit: 64}\n"
        "model: {arch: cifar, block: basic, shortcut: A, depth: 8}\ntrain: {epochs: 1, batch_size: 64}\n"
        "search:\n  algorithm: optuna\n  num_samples: N\n  space: {train.lr: {loguniform: [0.01, 0.5]}}\n"
        "resources: {cpu: 1}\n"
    )
    (tmp_path / "og.yaml").write_text(optuna_file.replace("N", "2"))
    assert cli("run", "og.yaml", "--no-report", cwd=tmp_path).returncode == 0
    (tmp_path / "og.yaml").write_text(optuna_file.replace("N", "4"))
    out = cli("run", "og.yaml", "--extend", "--no-report", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 done (kept, not trained again), 0 unfinished (continue from their checkpoints), 2 new" in out.stdout
    assert "Optuna's sampler starts from the sweep's 2 finished trials" in out.stdout
    client, parents, children = _runs(tmp_path, "og")
    assert len(parents) == 1 and len(children) == 4
    first = sorted(r["last"]["config"]["train.lr"] for r in tune_records(tmp_path / "ray_results" / "og").values())
    (state,) = (tmp_path / "ray_results" / "og" / "extension-1").glob("searcher-state-*.pkl")
    trials = pickle.loads(state.read_bytes())["_ot_study"].trials
    assert len(trials) == 4 and len(first) == 2  # the 2 told, then the 2 drawn after them
    assert sorted(t.params["train.lr"] for t in trials[:2]) == first
    assert {t.params["train.lr"] for t in trials[2:]}.isdisjoint(first)  # new draws, not the first ones again


@pytest.mark.unit
def test_a_password_set_into_the_sweep_file_is_never_rendered_into_the_config_map():
    from orchestrator.k8s import render

    parsed = load_spec(
        SWEEPS / "cifar_depth.yaml", ["tracking.tracking_uri=http://bob:S3CRETpw@mlflow:5000", "resources.gpu=1"]
    )
    with pytest.raises(SpecError) as err:
        render(
            parsed,
            image="img:1",
            gpus=1,
            namespace=None,
            name=None,
            tracking_uri=None,
            storage_path=None,
            data_claim=None,
        )
    assert str(err.value).startswith("--set tracking.tracking_uri: a password would be written into the ConfigMap")
    assert "S3CRET" not in str(err.value)
