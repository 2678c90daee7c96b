"""A sweep's MLflow runs on their own (orchestrator/tracking/sweep_runs.py), told trials as plain
values, against the in-memory store of tests/fake_mlflow.py: what each part of a trial's life
writes, to which run, in which order; runs found again by a second driver; the sweep's end."""

from __future__ import annotations

import pickle

import pytest

from orchestrator.tracking import writer
from orchestrator.tracking.sweep_runs import SweepRuns
from orchestrator.vocabulary import EARLIER_EPOCHS, HOSTNAME, LAYER_RESPONSES, NODE_ID, PARENT_TAG
from resnet_core import metrics as M
from resnet_core.metrics import Status
from tests.fake_mlflow import FakeMlflow

pytestmark = pytest.mark.unit

EPOCHS = 4
CONFIG = {"model.depth": 8, "train.lr": 0.1}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(writer, "RETRY_S", 0.02)


class Drawn:
    """Stands in for report.figures: says what it was asked to draw."""

    def learning_curve(self, curves):
        return f"curve of {sorted(k for k, v in curves.items() if v)}"

    def layer_responses(self, stds):
        return f"responses {stds}"


def drawing() -> Drawn:
    return Drawn()


def name_of(config: dict) -> str:
    return f"net{config['model.depth']}"


def sweep_runs(fake: FakeMlflow, **tags) -> SweepRuns:
    runs = SweepRuns(
        tracking_uri="fake:",
        experiment="exp",
        sweep_key="key",
        sweep_name="sweep",
        tags=tags,
        artifacts={"sweep.yaml": "name: sweep\n"},
        trial_namer=name_of,
        planned_epochs=EPOCHS,
        figures=drawing,
        client=fake,
    )
    runs.start_sweep()
    return runs


def result(epoch: int, **more) -> dict:
    return {M.EPOCH: epoch, **{key: round(0.9 - 0.1 * epoch + 0.001 * i, 4) for i, key in enumerate(M.METRICS)}, **more}


def record_set_tags(fake: FakeMlflow) -> list:
    """The keys of set_tag calls, in order."""
    seen, set_tag = [], fake.set_tag

    def recorded(run_id, key, value):
        seen.append(key)
        return set_tag(run_id, key, value)

    fake.set_tag = recorded
    return seen


def test_a_trials_life_in_its_run():
    fake = FakeMlflow()
    runs = sweep_runs(fake, team="vision")
    (parent,) = fake.active_runs("sweep")
    assert parent.data.tags["team"] == "vision" and parent.artifacts == {"sweep.yaml": "name: sweep\n"}

    runs.start_trial("t1", CONFIG)
    for epoch in range(1, EPOCHS + 1):
        runs.log_result("t1", CONFIG, result(epoch, **{NODE_ID: "n1", HOSTNAME: "host1"}))
    runs.writer.drain()
    set_tags = record_set_tags(fake)
    runs.end_trial("t1", CONFIG, result(EPOCHS, **{LAYER_RESPONSES: [0.5, 0.25]}))
    runs.writer.drain()  # the figures follow the trial's end

    (run,) = fake.active_runs()
    tags = run.data.tags
    assert run.info.run_name == "net8" and tags[PARENT_TAG] == parent.info.run_id
    assert tags["resnet_sweep.trial_id"] == "t1" and tags["resnet_sweep.sweep"] == "key"
    assert run.data.params["model.depth"] == "8" and run.data.params["model.block"] == "basic"  # resolved config
    assert [step for step, _ in fake.points(run.info.run_id, M.VAL_ERROR)] == [1, 2, 3, 4]
    assert (tags["node_id"], tags["host"], tags["nodes"]) == ("n1", "host1", "n1")
    assert (run.info.status, tags["status"], tags["best_epoch"]) == ("FINISHED", "completed", str(EPOCHS))
    assert set_tags == ["best_epoch", "status"]  # the status tag last: a run that has it is complete
    assert run.artifacts["layer_responses.json"] == {LAYER_RESPONSES: [0.5, 0.25]}
    assert run.artifacts["layer_responses.png"] == "responses [0.5, 0.25]"
    assert run.artifacts["learning_curve.png"] == f"curve of {sorted([M.TRAIN_ERROR, M.VAL_ERROR, M.TEST_ERROR])}"
    assert runs.state() == {"parent_id": parent.info.run_id, "runs": {"t1": run.info.run_id}}
    assert (runs.runs_created, runs.runs_ended, runs.points_sent) == (1, 1, EPOCHS * len(M.METRICS))

    assert runs.end_sweep([], Status.COMPLETED) == 0
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == "net8"
    assert fake.points(parent.info.run_id, M.VAL_ERROR) == [(0, fake.points(run.info.run_id, M.VAL_ERROR)[-1][1])]


def test_a_failed_trial_reads_its_trace_when_its_end_is_written():
    fake = FakeMlflow()
    runs = sweep_runs(fake)
    reads = []

    def trace() -> str:
        reads.append(1)
        return "Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory"

    runs.start_trial("t1", CONFIG)
    runs.log_result("t1", CONFIG, result(1))
    runs.end_trial("t1", CONFIG, result(1), error_trace=trace)
    (run,) = fake.active_runs()
    assert (run.info.status, run.data.tags["status"]) == ("FAILED", "out_of_memory")
    assert run.data.tags["error"] == "torch.OutOfMemoryError: CUDA out of memory"
    assert run.artifacts["error.txt"].startswith("Traceback") and reads == [1]

    runs.log_result("t2", {"model.depth": 14}, result(EPOCHS))
    runs.end_trial("t2", {"model.depth": 14}, result(EPOCHS))
    runs.end_trial("t2", {"model.depth": 14}, result(EPOCHS), error_trace=trace)  # told again: it ended already
    assert reads == [1] and fake.runs[runs.runs["t2"]].data.tags["status"] == "completed"


def test_a_second_driver_finds_the_runs_and_keeps_what_they_hold():
    fake = FakeMlflow()
    first = sweep_runs(fake)
    first.start_trial("t1", CONFIG)
    first.log_result("t1", CONFIG, result(1))
    first.log_result("t1", CONFIG, result(2))
    first.end_trial("t1", CONFIG, result(EPOCHS - 1))  # stopped early (ASHA): final
    first.log_result("t2", CONFIG, result(1))  # the same name: net8-2
    assert first.end_sweep(["t2"], Status.INTERRUPTED) == 0
    assert fake.runs[first.runs["t2"]].data.tags["status"] == "interrupted"
    assert fake.runs[first.runs["t2"]].info.status == "KILLED"

    again = sweep_runs(fake)  # `resume`: no state, the runs found by their tags
    assert again.runs == first.runs and again.parent_id == first.parent_id
    (parent,) = fake.active_runs("sweep")
    assert (parent.info.status, parent.data.tags["status"]) == ("RUNNING", "running")
    again.start_trial("t1", CONFIG)  # a finished run stays as it is
    again.start_trial("t3", CONFIG)  # a new trial's name is not one in use
    # t2 resumed from its epoch-1 checkpoint: epoch 1 again, then 2 with the epoch before it
    again.log_result("t2", CONFIG, result(1))
    again.log_result("t2", CONFIG, result(2, **{EARLIER_EPOCHS: '[{"epoch": 1, "val_error": 0.1}]'}))
    again.writer.drain()
    t1, t2, t3 = (fake.runs[again.runs[t]] for t in ("t1", "t2", "t3"))
    assert (t1.info.status, t1.data.tags["status"]) == ("FINISHED", "stopped_early")
    assert t1.data.tags["stopped_at_epoch"] == str(EPOCHS - 1)
    assert [r.info.run_name for r in (t1, t2, t3)] == ["net8", "net8-2", "net8-3"]
    assert [step for step, _ in fake.points(t2.info.run_id, M.VAL_ERROR)] == [1, 2]
    assert again.points_sent == len(M.METRICS)  # only epoch 2 of t2 was missing


def test_writes_during_an_outage_reach_their_runs_once_it_answers(capsys):
    fake = FakeMlflow()
    runs = sweep_runs(fake, **{"resnet_sweep.storage": "/sweeps/s1"})
    runs.start_trial("t1", CONFIG)
    runs.log_result("t1", CONFIG, result(1))
    runs.state()
    fake.down = True
    for epoch in range(2, EPOCHS + 1):
        runs.log_result("t1", CONFIG, result(epoch))
    runs.end_trial("t1", CONFIG, result(EPOCHS))
    # 3 epochs, the trial's end, the best trial and the parent's end
    assert runs.end_sweep([], Status.COMPLETED, wait_s=0) == 6
    err = capsys.readouterr().err
    assert "warning: 6 MLflow writes were not delivered; send them with `resnet-sweep sync /sweeps/s1`" in err

    fake.down = False
    assert runs.end_sweep([], Status.COMPLETED, wait_s=0) == 0
    (run,) = fake.active_runs()
    assert [step for step, _ in fake.points(run.info.run_id, M.VAL_ERROR)] == list(range(1, EPOCHS + 1))
    assert run.data.tags["status"] == "completed" and fake.active_runs("sweep")[0].info.status == "FINISHED"


def test_a_copy_keeps_the_runs_and_forgets_its_own_cache_on_an_outage():
    fake = FakeMlflow()
    runs = sweep_runs(fake)
    runs.log_result("t1", CONFIG, result(1))
    runs.state()
    copy = pickle.loads(pickle.dumps(runs))  # Tune's saved experiment; a ray:// driver
    assert copy._client is None and copy.runs == runs.runs and copy.parent_id == runs.parent_id
    assert copy.logged_epoch == {runs.runs["t1"]: 1}
    copy.writer.on_outage()
    assert copy.logged_epoch == {} and runs.logged_epoch == {runs.runs["t1"]: 1}  # its own, not the original's
