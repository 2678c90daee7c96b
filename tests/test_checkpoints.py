"""A checkpoint that cannot be restored (cut short, corrupt, another trial's): the trial
falls back to an older checkpoint or restarts from epoch 0, says so once, and never crash-loops."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from orchestrator.running.trainable import CHECKPOINT_FILE, _restore
from resnet_core.data import DataConfig
from resnet_core.resnet import ModelConfig
from resnet_core.train import RunConfig, TrainConfig, Trainer
from tests.support import child_runs, cli, table_rows

EPOCHS = 6
TWINS = f"""\
name: twins
dataset: {{name: digits, image_size: 8, train_limit: 256}}
model: {{arch: cifar, depth: 8, block: basic, shortcut: A}}
train: {{epochs: {EPOCHS}, batch_size: 64}}
search:
  algorithm: grid
  space:
    model.residual: [true, false]
resources: {{cpu: 1}}
"""


def interrupt_midway(cwd: Path) -> str:
    """`resnet-sweep run twins.yaml`, Ctrl-C once both trials have reported epoch 2, where the
    test's fault hook holds them (tests/faults): both are unfinished, however loaded the machine."""
    faults = cwd / "faults"
    faults.mkdir()
    (faults / "hold").write_text("2")
    exe = Path(sys.executable).parent / "resnet-sweep"
    proc = subprocess.Popen(
        [str(exe), "run", "twins.yaml"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).parent / "faults"),
            "RESNET_SWEEP_TEST_FAULTS": str(faults),
        },
    )
    seen, epoch = [], {}
    for line in proc.stdout:
        seen.append(line)
        if m := re.match(r"^\[\d\d:\d\d\] epoch +(\d+)/\d+ +(\S+)", line):
            epoch[m.group(2)] = int(m.group(1))
        if len(epoch) == 2 and min(epoch.values()) >= 2:
            break
    proc.send_signal(signal.SIGINT)
    seen.append(proc.communicate(timeout=300)[0])
    (faults / "hold").unlink()
    assert proc.returncode == 130, "".join(seen)[-3000:]
    assert epoch == {name: 2 for name in epoch}, "".join(seen)[-3000:]  # both held at epoch 2 of 6
    return "".join(seen)


def states(trial: Path) -> list[Path]:
    """The trial's checkpoint files, oldest first (Tune may not have deleted the one before yet,
    nor recorded the newest one in its experiment state)."""
    return sorted(trial.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))


@pytest.mark.slow  # the fallback itself is tested below without Ray
def test_unrestorable_checkpoints_restart_their_trials_once_on_resume(tmp_path):
    """One trial's state.pt files cut in half, the other's replaced by its twin's (same layer
    shapes: plain vs residual with shortcut A; it loads, but is not this trial's state). Before,
    each trial failed on resume (and on every retry from the same checkpoint). (Falling back to
    an older checkpoint is tested below.)"""
    (tmp_path / "twins.yaml").write_text(TWINS)
    interrupt_midway(tmp_path)
    trials = {p.name[:6]: p for p in (tmp_path / "ray_results" / "twins").iterdir() if p.is_dir()}
    assert sorted(trials) == ["plain8", "resnet"], trials
    corrupt = {trial: [state.parent.name for state in states(trial)] for trial in trials.values()}
    intact = states(trials["resnet"])[-1].read_bytes()
    for state in states(trials["resnet"]):
        state.write_bytes(state.read_bytes()[:1000])
    for state in states(trials["plain8"]):
        state.write_bytes(intact)

    out = cli("resume", "twins", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: trial ")]
    assert len(warnings) == 2, out.stderr
    for trial, reason in (
        (trials["resnet"], "failed finding central directory"),
        (trials["plain8"], "another trial's state: model.residual True, this trial's False"),
    ):
        (line,) = [w for w in warnings if w.startswith(f"warning: trial {trial}: cannot restore ")]
        for folder in corrupt[trial]:
            assert f"{folder}/{CHECKPOINT_FILE} (" in line, line
        assert line.count(reason) == len(corrupt[trial]) and line.endswith("; restarting from epoch 0"), line
        assert not list(trial.glob("error*")), list(trial.iterdir())  # the trial never errored
    rows = table_rows(out.stdout)
    assert len(rows) == 2 and all(" completed " in r for r in rows), out.stdout
    assert not re.search(r"^\[\d\d:\d\d\] (retrying|failed) ", out.stdout, re.MULTILINE), out.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,), children = child_runs(client, "twins")
    assert len(children) == 2 and parent.data.tags["status"] == "completed"
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_error")]
        assert steps == list(range(1, EPOCHS + 1)), (run.info.run_name, steps)  # every epoch, once
        assert (run.data.tags["status"], run.info.status) == ("completed", "FINISHED"), run.info.run_name


@pytest.mark.slow
def test_a_checkpoint_tune_names_but_storage_no_longer_holds_resumes_from_the_newest_there(tmp_path):
    """Tune deletes a trial's older checkpoint once a newer one is saved, and uploads the
    experiment state naming the newer one later: a driver killed in between left a state naming
    a deleted checkpoint, and the trial failed on every resume. Here each trial's checkpoints
    are renumbered 10 up after Ctrl-C, so whichever one the state names is gone."""
    (tmp_path / "twins.yaml").write_text(TWINS)
    interrupt_midway(tmp_path)
    for trial in (p for p in (tmp_path / "ray_results" / "twins").iterdir() if p.is_dir()):
        for state in reversed(states(trial)):
            folder = state.parent
            folder.rename(folder.with_name(f"checkpoint_{int(folder.name.removeprefix('checkpoint_')) + 10:06d}"))

    out = cli("resume", "twins", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = table_rows(out.stdout)
    assert len(rows) == 2 and all(" completed " in r for r in rows), out.stdout
    assert not re.search(r"^\[\d\d:\d\d\] (retrying|failed) ", out.stdout, re.MULTILINE), out.stdout
    assert not re.search(r"^\[\d\d:\d\d\] epoch +1/", out.stdout, re.MULTILINE), out.stdout  # none started again
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, children = child_runs(client, "twins")
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_error")]
        assert steps == list(range(1, EPOCHS + 1)), (run.info.run_name, steps)


# --- the choice itself, on a trial folder as Tune leaves it (no Ray needed) --------------------


def tiny(depth: int = 8, residual: bool = True) -> RunConfig:
    return RunConfig(
        model=ModelConfig(depth=depth, width=1, residual=residual),
        dataset=DataConfig(name="synthetic", synthetic_size=64, image_size=8, val_size=16),
        train=TrainConfig(epochs=3, batch_size=32),
    )


def checkpoints(cfg: RunConfig, trial: Path) -> list[Path]:
    """Train ``cfg`` to the end in ``trial``, one checkpoint_00000k/state.pt per epoch (as Tune numbers them)."""
    files = []

    def report(r) -> None:
        files.append(trial / f"checkpoint_{r.epoch - 1:06d}" / CHECKPOINT_FILE)
        files[-1].parent.mkdir(parents=True)
        torch.save(r.checkpoint(), files[-1])

    Trainer(cfg).run(report)
    return files


def same_weights(a: Trainer, b: Trainer) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trial")
    return folder, [p.read_bytes() for p in checkpoints(tiny(), folder)]


def tune_checkpoint(state: Path):
    from ray import tune

    return tune.Checkpoint.from_directory(str(state.parent))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(trained, tmp_path):
    _, states = trained
    for k, data in enumerate(states[:2]):
        (tmp_path / f"checkpoint_{k:06d}").mkdir()
        (tmp_path / f"checkpoint_{k:06d}" / CHECKPOINT_FILE).write_bytes(data)
    newest = tmp_path / "checkpoint_000001" / CHECKPOINT_FILE
    newest.write_bytes(b"\x00garbage" * 100)
    trainer, warning = _restore(Trainer(tiny()), str(tmp_path), tune_checkpoint(newest))
    assert trainer.epoch == 1 and len(trainer.history) == 1
    assert warning == (
        f"warning: trial {tmp_path}: cannot restore checkpoint_000001/{CHECKPOINT_FILE} "
        f"(UnpicklingError: Unsupported operand 0); continuing from epoch 1 of checkpoint_000000"
    )


def test_an_intact_checkpoint_restores_without_a_word(trained):
    folder, _ = trained
    trainer, warning = _restore(
        Trainer(tiny()), str(folder), tune_checkpoint(folder / "checkpoint_000001" / CHECKPOINT_FILE)
    )
    assert warning is None and trainer.epoch == 3  # a newer stored checkpoint than Tune's is still taken


def broken(kind: str, states: list[bytes], tmp_path: Path) -> bytes:
    """A state.pt that loads (or not) but is not this trial's trainer state."""
    import io

    if kind == "empty":
        return b""
    state = torch.load(io.BytesIO(states[0]), weights_only=True)
    if kind == "missing key":
        del state["optimizer"]
    elif kind == "other shapes":  # another model's weights under this trial's config
        other = checkpoints(tiny(depth=14), tmp_path / "other")[0]
        state = {**torch.load(other, weights_only=True), "config": state["config"]}
    elif kind == "not a dict":
        state = [state]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "empty file"),
        ("missing key", "not a trainer state (no 'optimizer')"),
        ("other shapes", "RuntimeError: Error(s) in loading state_dict for ResNet:"),
        ("not a dict", "not a trainer state (list without a config)"),
    ],
)
def test_an_unusable_only_checkpoint_restarts_from_a_clean_trainer(trained, tmp_path, kind, reason):
    _, states = trained
    state = tmp_path / "trial" / "checkpoint_000000" / CHECKPOINT_FILE
    state.parent.mkdir(parents=True)
    state.write_bytes(broken(kind, states, tmp_path))
    trainer, warning = _restore(Trainer(tiny()), str(tmp_path / "trial"), tune_checkpoint(state))
    assert warning.startswith(
        f"warning: trial {tmp_path / 'trial'}: cannot restore checkpoint_000000/{CHECKPOINT_FILE} ({reason}"
    )
    assert warning.endswith("; restarting from epoch 0") and "\n" not in warning
    assert trainer.epoch == 0 and trainer.history == [] and same_weights(trainer, Trainer(tiny()))
