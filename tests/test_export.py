"""`resnet-sweep export` and resnet_core's one-call loader: the file (weights_only readable),
the model it loads (the trainer's outputs, its normalisation, torchvision's ResNet for the
ImageNet nets), an array member's own weights, the best epoch's checkpoint, and end to end on
a real sweep: the export of its best trial gives its logged test error exactly."""

import re
from pathlib import Path

import pytest
import torch
import torchvision
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.running.export import NoEpochWeights, Weights, exported_weights, trial_weights
from orchestrator.vocabulary import TAG_TRIAL_ID
from resnet_core import load_export, load_model
from resnet_core import metrics as M
from resnet_core.array import ArrayTrainer
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from resnet_core.errors import ConfigError
from resnet_core.export import save_export, torchvision_name
from resnet_core.resnet import build_model
from resnet_core.train import Trainer
from tests.support import child_runs, cli

DATA = DataConfig(name="synthetic", synthetic_size=96, synthetic_classes=4, image_size=16, val_size=32)


def run(model: dict | None = None, **train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(**{"depth": 8, **(model or {})}),
        dataset=DATA,
        train=TrainConfig(**{"batch_size": 32, "epochs": 1, "device": "cpu", **train}),
    )


def export(path: Path, state_dict: dict, cfg: RunConfig, epoch: int = 1, metrics: dict | None = None) -> Path:
    save_export(path, state_dict, cfg, epoch=epoch, metrics=metrics or {}, source={"sweep": "s", "trial": "t"})
    return path


@pytest.mark.unit
def test_the_file_reads_with_weights_only_and_loads_the_trainers_model(tmp_path):
    trainer = Trainer(run(model={"dropout": 0.2}))
    result = trainer.run()
    path = export(tmp_path / "a folder" / "m.pt", trainer.model.state_dict(), trainer.cfg, 1, trainer.history[-1])

    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "resnet-sweep model" and blob["version"] == 1
    assert blob["model"] == trainer.cfg.model.to_dict() and blob["num_classes"] == 4 and blob["input_size"] == 16
    assert blob["class_names"] == ["0", "1", "2", "3"] and blob["source"] == {"sweep": "s", "trial": "t"}
    assert blob["metrics"][M.TEST_ERROR] == result[M.TEST_ERROR]
    assert list(tmp_path.joinpath("a folder").iterdir()) == [path]  # no partial file left beside it

    exported = load_export(path)
    model = load_model(path)
    assert not model.training and not exported.model.training  # ready for evaluation (dropout off)
    assert torch.equal(exported.mean, trainer.test_loader.mean) and torch.equal(exported.std, trainer.test_loader.std)
    x, _ = next(iter(trainer.test_loader))
    assert torch.equal(exported.normalize(trainer.splits.test_x[: len(x)]), x)  # the trainer's normalisation
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), trainer.model(x))
    trainer.model = trainer.infer = model  # evaluated as the trainer evaluates: its logged test error
    assert trainer.evaluate(trainer.test_loader)[1] == result[M.TEST_ERROR]


@pytest.mark.unit
def test_an_interrupted_export_leaves_the_file_there_as_it_was(tmp_path, monkeypatch):
    cfg = run()
    path = tmp_path / "m.pt"
    path.write_bytes(b"before")

    def cut_short(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(KeyboardInterrupt):
        export(path, Trainer(cfg).model.state_dict(), cfg)
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == b"before"


@pytest.mark.unit
def test_a_file_that_is_no_export_is_one_clear_error(tmp_path):
    torch.save({"model": {}}, tmp_path / "state.pt")
    (tmp_path / "text.pt").write_text("hello")
    for name in ("state.pt", "text.pt"):
        with pytest.raises(ValueError, match="not a resnet-sweep model export"):
            load_model(tmp_path / name)
    cfg = run()
    path = export(tmp_path / "m.pt", Trainer(cfg).model.state_dict(), cfg)
    blob = torch.load(path, weights_only=True)
    torch.save({**blob, "version": 99}, path)
    with pytest.raises(ValueError, match="version 99; this resnet_core reads version 1"):
        load_model(path)


@pytest.mark.unit
@pytest.mark.parametrize(
    "model",
    [{"arch": "imagenet", "depth": 18}, {"arch": "imagenet", "depth": 50, "bottleneck_stride": "3x3"}],
    ids=["resnet18", "resnet50"],
)
def test_an_imagenet_export_loads_into_torchvisions_resnet_with_the_same_logits(tmp_path, model):
    cfg = run(model=model)
    torch.manual_seed(0)
    ours = build_model(cfg.model, num_classes=4)
    with torch.no_grad():  # BN statistics and affine parameters that are not the identity
        for bn in (m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
    exported = load_export(export(tmp_path / "m.pt", ours.state_dict(), cfg))
    net = exported.torchvision_model()
    assert type(net) is torchvision.models.ResNet and not net.training
    assert type(net.layer1[0]).__name__ == ("BasicBlock" if model["depth"] < 50 else "Bottleneck")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), exported.model(x))


@pytest.mark.unit
@pytest.mark.parametrize(
    "model, setting",
    [
        ({"arch": "cifar", "depth": 20}, "model.arch"),
        ({"arch": "imagenet", "depth": 18, "residual": False}, "model.residual"),
        ({"arch": "imagenet", "depth": 18, "block": "preact-basic"}, "model.block"),
        ({"arch": "imagenet", "depth": 18, "shortcut": "A"}, "model.shortcut"),
        ({"arch": "imagenet", "depth": 18, "shortcut": "C"}, "model.shortcut"),
        ({"arch": "imagenet", "depth": 18, "width": 2}, "model.width"),
        ({"arch": "imagenet", "stages": [1, 1, 1, 1]}, "model.stages"),
        ({"arch": "imagenet", "depth": 50}, "model.bottleneck_stride"),  # the paper's: strides the 1×1
    ],
)
def test_a_net_torchvision_does_not_build_names_the_setting(model, setting):
    with pytest.raises(ConfigError) as err:
        torchvision_name(ModelConfig(**model))
    assert err.value.field == setting and "torchvision's ResNets have no" in err.value.reason


@pytest.mark.unit
def test_an_array_members_export_is_its_own_single_net(tmp_path):
    """Its weights from the array's checkpoint, in the single trial's form: evaluated as its
    single trial is, they give the member's own test error."""
    cfgs = [run(seed=0), run(seed=1, lr=0.05)]
    array = ArrayTrainer(cfgs)
    array.run()
    state = array.state_dict()
    for k, cfg in enumerate(cfgs):
        weights = trial_weights(state, k, "checkpoint_000000")
        assert weights.epoch == 1 and weights.config == cfg.to_flat() and weights.history == array.histories[k]
        exported = load_export(export(tmp_path / f"m{k}.pt", weights.model, cfg))
        single = Trainer(cfg)
        single.model = single.infer = exported.model
        assert single.evaluate(single.test_loader)[1] == array.histories[k][-1][M.TEST_ERROR]
    state["members"][1]["status"] = "diverged"
    with pytest.raises(NoEpochWeights, match="diverged"):
        trial_weights(state, 1)


def _weights(*kept: int, epochs: int = 3, best: int = 2) -> list[Weights]:
    history = [{M.EPOCH: e, M.VAL_ERROR: 0.1 if e == best else 0.5, M.TEST_ERROR: e / 10} for e in range(1, epochs + 1)]
    return [Weights(f"checkpoint_{e:06d}", e, {}, history[:e], {}) for e in kept]


@pytest.mark.unit
def test_the_best_epochs_checkpoint_is_exported_when_kept_else_the_latest_and_it_says_so():
    chosen, row, note = exported_weights("t", _weights(2, 3))
    assert (chosen.epoch, row[M.TEST_ERROR], note) == (2, 0.2, None)
    chosen, row, note = exported_weights("t", _weights(3))
    assert (chosen.epoch, row[M.TEST_ERROR]) == (3, 0.3)
    assert note == (
        "note: trial t: its best epoch's (2) weights were not kept; exporting epoch 3, its latest checkpoint "
        "(test err 30.00%; the logged 20.00% is epoch 2's)"
    )


def test_export_best_of_a_sweep_gives_its_logged_test_error_exactly(tmp_path, capsys, monkeypatch, quickstart_sweep):
    """The best trial's best epoch (Tune keeps its checkpoint besides the latest), evaluated on
    the test split as the trainer evaluates it: the test error MLflow logged for it. The sweep:
    the quickstart's smoke test (session fixture), read from another folder."""
    sweeps = quickstart_sweep.cwd / "ray_results"
    client = MlflowClient(f"sqlite:///{quickstart_sweep.cwd / 'mlflow.db'}")
    _, children = child_runs(client, "quickstart")
    best_epoch = {c.info.run_id: int(c.data.tags["best_epoch"]) for c in children}
    logged = {  # each trial's errors at its best epoch, as MLflow has them
        c.info.run_id: {
            key: next(
                m.value for m in client.get_metric_history(c.info.run_id, key) if m.step == best_epoch[c.info.run_id]
            )
            for key in (M.VAL_ERROR, M.TEST_ERROR)
        }
        for c in children
    }
    # The lowest val error, the earliest trial on ties.
    best = min(children, key=lambda c: (logged[c.info.run_id][M.VAL_ERROR], c.data.tags[TAG_TRIAL_ID]))

    out = cli(
        "export", "quickstart", "--best", "--out", "a path with spaces/best.pt", "--storage-path", sweeps, cwd=tmp_path
    )
    assert out.returncode == 0 and "not kept" not in out.stderr, out.stdout + out.stderr
    path = tmp_path / "a path with spaces" / "best.pt"
    epoch = best_epoch[best.info.run_id]
    assert re.match(
        rf"exported {best.info.run_name} of sweep quickstart, epoch {epoch} \(.*\) to a path with spaces/best.pt",
        out.stdout,
    )

    exported = load_export(path)
    assert exported.source["trial"] == best.info.run_name and exported.class_names == [str(d) for d in range(10)]
    config = RunConfig.from_flat(exported.source["config"])
    assert str(config.model.depth) == best.data.params["model.depth"]
    trainer = Trainer(config)  # the test split, evaluated as the trainer evaluates it
    assert torch.equal(trainer.test_loader.mean, exported.mean)
    trainer.model = trainer.infer = load_model(path)
    test_error = logged[best.info.run_id][M.TEST_ERROR]
    assert exported.epoch == epoch and trainer.evaluate(trainer.test_loader)[1] == test_error
    assert exported.metrics[M.TEST_ERROR] == test_error

    # The errors, one line each (in this process: the CLI's code, without another start-up).
    monkeypatch.chdir(tmp_path)
    assert main(["export", "quickstart", "--trial", "resnet99", "--out", "x.pt", "--storage-path", str(sweeps)]) == 2
    assert main(["export", "nothere", "--best", "--out", "x.pt", "--storage-path", str(sweeps)]) == 2
    lines = capsys.readouterr().err.splitlines()
    head, _, names = lines[0].partition("; its trials: ")
    assert head == "error: --trial: no trial 'resnet99' in sweep quickstart"
    assert sorted(names.split(", ")) == sorted(c.info.run_name for c in children)
    assert lines[1:] == [
        f"error: no sweep named 'nothere' in {sweeps} (and no sweep folder at that path); sweeps there: quickstart",
    ]
    assert not (tmp_path / "x.pt").exists()
