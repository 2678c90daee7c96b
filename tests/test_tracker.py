"""The MLflow tracker driven as Tune drives it, against an in-memory store that fails and delays
on command (tests/fake_mlflow.py): one run per trial and every point once, whatever the order in
which the server dies, comes back and answers. No Ray, no server: the unit tier of tracking."""

from __future__ import annotations

import pickle
import time
from types import SimpleNamespace

import pytest

from orchestrator.running.tracker import SweepTracker
from orchestrator.tracking import writer
from resnet_core import metrics as M
from resnet_core.metrics import Status
from tests.fake_mlflow import FakeMlflow

pytestmark = pytest.mark.unit

EPOCHS = 6


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(writer, "RETRY_S", 0.02)


def trial(trial_id: str, depth: int) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=trial_id,
        config={"model.depth": depth, "train.lr": 0.1},
        last_result={},
        status="RUNNING",
        path=f"/sweep/{trial_id}",
    )


def result(t, epoch: int) -> dict:
    return {
        M.EPOCH: epoch,
        "trial_id": t.trial_id,
        **{key: round(0.9 - 0.1 * epoch + 0.001 * i, 4) for i, key in enumerate(M.METRICS)},
        M.ITERATION: 10 * epoch,
    }


def name_of(config: dict) -> str:
    return f"net{config['model.depth']}"


class Driver:
    """Tune's loop: the tracker's callbacks, in the order Tune calls them."""

    def __init__(self, fake: FakeMlflow) -> None:
        self.fake = fake
        self.tracker = SweepTracker(
            tracking_uri="fake:",
            experiment="exp",
            sweep_key="key",
            sweep_name="sweep",
            tags={},
            artifacts={},
            trial_namer=name_of,
            planned_epochs=EPOCHS,
            client=fake,
        )
        self.tracker.setup()

    def start(self, t) -> None:
        self.tracker.on_trial_start(iteration=0, trials=[], trial=t)

    def report(self, t, *epochs: int) -> None:
        for epoch in epochs:
            t.last_result = result(t, epoch)
            self.tracker.on_trial_result(iteration=0, trials=[], trial=t, result=t.last_result)

    def complete(self, t) -> None:
        t.status = "TERMINATED"
        self.tracker.on_trial_complete(iteration=0, trials=[], trial=t)

    def end(self) -> int:
        """The sweep's end: what is still queued is sent (MLflow answers by now); the writes left."""
        return self.tracker.end_sweep([], Status.COMPLETED)


def assert_one_run_each_every_point_once(fake: FakeMlflow, trials: list) -> None:
    runs = fake.active_runs()
    assert sorted(r.data.tags["resnet_sweep.trial_id"] for r in runs) == sorted(t.trial_id for t in trials)
    for run in runs:
        for key in M.METRICS:
            assert [step for step, _ in fake.points(run.info.run_id, key)] == list(range(1, EPOCHS + 1)), (
                run.info.run_name,
                key,
            )
        assert (run.data.tags["status"], run.info.status) == ("completed", "FINISHED"), run.info.run_name
    (parent,) = fake.active_runs("sweep")
    assert parent.data.tags["status"] == "completed" and parent.info.status == "FINISHED"


def wait_for(condition, what: str) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < 10, what
        time.sleep(0.005)


def test_a_create_whose_answer_was_lost_is_found_not_made_again():
    fake = FakeMlflow()
    driver = Driver(fake)
    a = trial("a", 8)
    fake.lose_answer("create_run")  # the server made the run and died before answering
    driver.start(a)
    driver.report(a, *range(1, EPOCHS + 1))
    driver.complete(a)
    assert driver.end() == 0
    assert fake.calls.count("create_run") == 2  # the parent and this trial's run: never a second one
    assert_one_run_each_every_point_once(fake, [a])


def test_a_batch_whose_answer_was_lost_is_not_sent_twice():
    fake = FakeMlflow()
    driver = Driver(fake)
    a, b = trial("a", 8), trial("b", 14)
    driver.start(a)
    driver.start(b)
    driver.report(a, 1, 2)
    driver.tracker.get_state()
    fake.lose_answer("log_batch")  # epoch 3 of `a` is stored, its answer lost: sent again on replay?
    for epoch in range(3, EPOCHS + 1):
        driver.report(a, epoch)
        driver.report(b, epoch - 2)
    driver.report(b, EPOCHS - 1, EPOCHS)
    driver.complete(a)
    driver.complete(b)
    assert driver.end() == 0
    assert_one_run_each_every_point_once(fake, [a, b])


def test_the_server_dying_again_in_the_middle_of_a_replay():
    fake = FakeMlflow()
    driver = Driver(fake)
    trials = [trial(str(k), 8 + 6 * k) for k in range(3)]
    fake.down = True
    for t in trials:
        driver.start(t)
        driver.report(t, 1, 2, 3)
    driver.tracker.get_state()
    reached, released = fake.hold("create_run")  # the replay reaches the first trial's create …
    fake.down = False
    time.sleep(0.05)  # past the retry time
    driver.report(trials[0], 4)  # … once a write wakes the writer: it replays what was queued
    assert reached.wait(10), "the replay never reached create_run"
    fake.down = True  # … and the server dies again while that request is in flight
    released.set()
    driver.tracker.get_state()
    fake.down = False
    for t in trials:
        driver.report(t, *range(4 + (t is trials[0]), EPOCHS + 1))
        driver.complete(t)
    assert driver.end() == 0
    assert_one_run_each_every_point_once(fake, trials)


def test_a_trial_ending_while_the_writer_replays_an_outage_gets_one_run():
    """The race of a loaded machine (5 runs for 4 trials): a trial's end, written in Tune's loop,
    replayed the outage queue while the writer thread replayed it too, and both created one
    trial's run. Here every create takes 50 ms, so both paths are in flight together."""
    fake = FakeMlflow()
    driver = Driver(fake)
    a, b, c, d = trial("a", 8), trial("b", 14), trial("c", 20), trial("d", 26)
    driver.start(d)
    driver.report(d, *range(1, EPOCHS))
    driver.tracker.get_state()
    fake.down = True
    driver.start(a)
    driver.report(a, *range(1, EPOCHS + 1))
    driver.complete(a)  # its end waits in the queue, its figures to follow
    for t in (b, c):
        driver.start(t)
        driver.report(t, 1, 2)
    driver.report(d, EPOCHS)
    time.sleep(0.05)  # past the retry time
    fake.down = False
    fake.delay_s["create_run"] = 0.05
    driver.complete(d)  # the first write once MLflow is back: a trial's end
    for t in (b, c):
        driver.report(t, *range(3, EPOCHS + 1))
        driver.complete(t)
    assert driver.end() == 0
    assert_one_run_each_every_point_once(fake, [a, b, c, d])


def test_two_runs_of_one_trial_are_merged_into_the_first_and_the_other_deleted(capsys):
    """A store written before runs were made by one thread: trial `a`'s history split over two
    runs, the first left RUNNING at epoch 3, the second holding the rest and the trial's end. The
    next driver (resume, sync) finds them and merges them into the first."""
    fake = FakeMlflow()
    driver = Driver(fake)
    a = trial("a", 8)
    driver.start(a)
    driver.report(a, 1, 2, 3)
    first = driver.tracker.get_state()["runs"]["a"]
    second = fake.create_run(fake.runs[first].experiment_id, run_name="net8-2", tags=dict(fake.runs[first].data.tags))
    driver.tracker.get_state()
    driver.tracker.runs["a"] = second.info.run_id  # the second path wrote the rest there, and ended it
    driver.report(a, 4, 5, 6)
    driver.complete(a)
    driver.end()
    assert len(fake.active_runs()) == 2

    again = Driver(fake)  # `resume` or `sync`: a new tracker finds the runs
    assert again.tracker.runs == {"a": first}
    assert again.end() == 0
    assert_one_run_each_every_point_once(fake, [a])
    gone = fake.runs[second.info.run_id]
    assert gone.deleted and gone.data.tags["resnet_sweep.duplicate_of"] == first and gone.info.status != "RUNNING"
    assert "learning_curve.png" in fake.runs[first].artifacts
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and f"note: trial a had a second MLflow run, net8-2 ({second.info.run_id}); its points are merged into net8 ({first})"
        in err
    )
    Driver(fake)  # found once more: nothing left to merge
    assert capsys.readouterr().err == ""


def test_tunes_state_saves_register_one_exit_hook(monkeypatch):
    registered = []
    monkeypatch.setattr(writer.atexit, "register", registered.append)
    driver = Driver(FakeMlflow())
    a = trial("a", 8)
    driver.start(a)
    for epoch in range(1, EPOCHS + 1):
        driver.report(a, epoch)
        driver.tracker.get_state()  # Tune saves its state (and the tracker's) after results
    driver.complete(a)
    driver.end()
    assert len(registered) == 1


def test_a_copy_of_the_tracker_keeps_the_runs_and_opens_its_own_client():
    """Tune pickles its callbacks with the experiment (and ships them to a ray:// head): the copy
    knows the runs and the results seen, and opens MLflow itself; Tune's saved state restores them."""
    fake = FakeMlflow()
    driver = Driver(fake)
    a = trial("a", 8)
    driver.start(a)
    driver.report(a, 1)
    state = driver.tracker.get_state()
    assert state == {"parent_id": driver.tracker.sweep.parent_id, "runs": {"a": fake.active_runs()[0].info.run_id}}
    copy = pickle.loads(pickle.dumps(driver.tracker))
    assert copy.sweep._client is None and copy.trial_namer is name_of
    assert (copy.get_state(), copy.last_result) == (state, {"a": a.last_result})
    fresh = Driver(FakeMlflow())
    fresh.tracker.set_state(state)
    assert fresh.tracker.runs == state["runs"]


def test_a_tracker_saved_before_its_runs_had_their_own_class_resumes_into_its_runs():
    """tuner.pkl of a sweep started with the version whose tracker held its fields flat: `resume`
    unpickles it with this code; the trial goes on in its run, no second run is made."""
    fake = FakeMlflow()
    driver = Driver(fake)
    a = trial("a", 8)
    driver.start(a)
    driver.report(a, 1, 2)
    sweep = driver.tracker.sweep
    old = {  # what that version's __getstate__ saved
        "tracking_uri": "fake:",
        "experiment": "exp",
        "sweep_key": "key",
        "sweep_name": "sweep",
        "tags": {},
        "artifacts": {},
        "trial_namer": name_of,
        "planned_epochs": EPOCHS,
        "parent_id": sweep.parent_id,
        "runs": dict(sweep.runs),
        "names": set(sweep.names),
        "logged_epoch": dict(sweep.logged_epoch),
        "nodes": {},
        "last_result": {"a": a.last_result},
        "_client": None,
        "_writer": None,
        "_jobs": None,
        "_pending": [],
        "_at_exit": False,
        "_retry_at": 0.0,
        "_warned": False,
        "points_sent": 0,
        "runs_created": 1,
        "runs_ended": 0,
    }
    restored = SweepTracker.__new__(SweepTracker)
    restored.__setstate__(old)
    restored.sweep._client = fake
    assert restored.get_state() == {"parent_id": sweep.parent_id, "runs": old["runs"]}
    assert restored.last_result == {"a": a.last_result}
    restored.setup()
    restored.on_trial_start(iteration=0, trials=[], trial=a)
    for epoch in range(3, EPOCHS + 1):
        a.last_result = result(a, epoch)
        restored.on_trial_result(iteration=0, trials=[], trial=a, result=a.last_result)
    a.status = "TERMINATED"
    restored.on_trial_complete(iteration=0, trials=[], trial=a)
    assert restored.end_sweep([], Status.COMPLETED) == 0
    assert_one_run_each_every_point_once(fake, [a])
