"""The MLflow writer on its own (orchestrator/tracking/writer.py): writes made in the order they
were handed over, held through an outage and replayed once the server answers, ``flush`` and
``drain`` waiting, the fence. The writes here append to an in-memory log that fails on command."""

from __future__ import annotations

import pickle
import time

import pytest

from orchestrator.tracking import writer
from orchestrator.tracking.writer import TRACKING_FENCE, MlflowWriter

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(writer, "RETRY_S", 0.02)
    yield
    TRACKING_FENCE.clear()


class Server:
    """Keeps what it is sent, in order (a write made twice is seen twice); down, or losing the
    answer of a write it made, on command."""

    def __init__(self) -> None:
        self.log: list = []
        self.down = False
        self.lose_answers = 0
        self.delay_s = 0.0
        self.down_after: int | None = None  # goes down after this many more writes

    def write(self, item) -> str:
        time.sleep(self.delay_s)
        if self.down_after == 0:
            self.down, self.down_after = True, None
        if self.down:
            raise ConnectionError("connection refused")
        self.log.append(item)
        if self.down_after:
            self.down_after -= 1
        if self.lose_answers:
            self.lose_answers -= 1
            raise ConnectionError("connection reset after the request was made")
        return f"made {item}"


def past_retry_time() -> None:
    time.sleep(2 * writer.RETRY_S)


def test_writes_held_in_an_outage_are_made_later_in_the_order_handed_over(capsys):
    server, w = Server(), MlflowWriter()
    for item in (1, 2, 3):
        w.submit(server.write, item)
    w.drain()
    server.down = True
    w.submit(server.write, 4)  # fails: held
    w.drain()
    server.down = False
    w.submit(server.write, 5)  # the server answers again, but 4 is not retried yet: 5 waits behind it
    w.drain()
    assert (server.log, w.held) == ([1, 2, 3], 2)
    past_retry_time()
    w.submit(server.write, 6)  # the first write after the retry time replays what is held, then is made
    w.drain()
    assert (server.log, w.held) == ([1, 2, 3, 4, 5, 6], 0)
    err = capsys.readouterr().err
    assert "warning: MLflow write failed (ConnectionError: connection refused); results are kept" in err
    assert err.rstrip().endswith("MLflow answers again: the results held back are sent")


def test_a_write_made_with_its_answer_lost_is_not_made_twice_by_a_write_that_reads_back():
    """The writer makes a held write again whole; one that reads what the server has (not what it
    assumed before the failure, which ``on_outage`` forgets) sends nothing twice."""

    def run(on_outage_clears: bool) -> list:
        server, known = Server(), {}

        def send_epoch(epoch: int) -> None:
            last = known.setdefault("last", max(server.log, default=0))  # read back when not known
            if epoch > last:
                server.write(epoch)
                known["last"] = epoch

        w = MlflowWriter(on_outage=known.clear if on_outage_clears else None)
        w.submit(send_epoch, 1)
        w.submit(send_epoch, 2)
        w.drain()
        server.lose_answers = 1
        w.submit(send_epoch, 3)  # made, its answer lost: held as if it failed
        w.drain()
        past_retry_time()
        w.submit(send_epoch, 4)
        assert w.flush(1) == 0
        return server.log

    assert run(on_outage_clears=True) == [1, 2, 3, 4]
    assert run(on_outage_clears=False) == [1, 2, 3, 3, 4]  # the check can fail: without it, 3 is sent twice


def test_flush_retries_for_up_to_its_wait_and_returns_the_writes_left():
    server, w = Server(), MlflowWriter()
    server.down = True
    w.submit(server.write, "a")
    w.submit(server.write, "b")
    t0 = time.monotonic()
    assert w.flush(0.2) == 2
    assert 0.1 <= time.monotonic() - t0 < 5  # it retried while its wait lasted
    t0 = time.monotonic()
    assert w.flush(0) == 2  # no wait: one try
    assert time.monotonic() - t0 < 0.1
    server.down = False
    assert w.flush(0) == 0
    assert server.log == ["a", "b"]


def test_flush_and_a_waited_write_return_after_the_writes_before_them():
    server, w = Server(), MlflowWriter()
    server.delay_s = 0.05
    for item in range(3):
        w.submit(server.write, item)
    assert w.flush(0) == 0 and server.log == [0, 1, 2]
    w.submit(server.write, 3)
    assert w.submit(server.write, 4, wait=True) == "made 4"  # the done-future's value: the write's
    assert server.log == [0, 1, 2, 3, 4]
    server.down = True
    assert w.submit(server.write, 5, wait=True) is None  # held: returns, with nothing
    assert w.held == 1


def test_nothing_is_lost_when_the_server_comes_back_and_dies_again_midway_through_the_replay():
    server, outages = Server(), []
    w = MlflowWriter(on_outage=lambda: outages.append(len(server.log)))
    for item in range(50):
        w.submit(server.write, item)
    w.drain()
    server.down = True
    for item in range(50, 100):
        w.submit(server.write, item)
    w.drain()
    assert (len(server.log), w.held) == (50, 50)
    server.down, server.down_after = False, 10  # back, and down again after 10 writes of the replay
    past_retry_time()
    for item in range(100, 150):
        w.submit(server.write, item)
    w.drain()
    assert (server.log, w.held) == (list(range(60)), 90)
    server.down = False
    assert w.flush(5) == 0
    assert server.log == list(range(150))
    assert outages == [50, 60]  # each failure told once: the first write of each outage, then held


def test_run_reads_after_the_writes_before_it_and_write_now_makes_a_write_at_once(capsys):
    server, w = Server(), MlflowWriter()
    server.delay_s = 0.02
    w.submit(server.write, "queued")
    assert w.run(lambda: list(server.log)) == ["queued"]

    def job():
        w.submit(server.write, "after the job")  # from the writer's thread: behind everything
        return w.write_now(server.write, "in the job")

    assert w.run(job) == "made in the job"
    w.drain()
    assert server.log == ["queued", "in the job", "after the job"]

    def broken():
        raise RuntimeError("a bug, not an outage")

    assert w.run(broken) is None and w.held == 0  # a job is not held: it says why it failed
    assert "warning: MLflow write broken failed: RuntimeError: a bug, not an outage" in capsys.readouterr().err


def test_the_fence_drops_what_is_held_and_writes_nothing_more():
    server, w = Server(), MlflowWriter()
    server.down = True
    w.submit(server.write, 1)
    w.submit(server.write, 2)
    w.drain()
    assert w.held == 2
    TRACKING_FENCE.set()  # another driver took the sweep over
    server.down = False
    past_retry_time()
    assert w.submit(server.write, 3, wait=True) is None
    assert w.flush(1) == 0  # nothing left to deliver: the sweep's writes are the other driver's
    assert server.log == []


def test_a_copy_holds_nothing_and_starts_its_own_thread(monkeypatch):
    registered = []
    monkeypatch.setattr(writer.atexit, "register", registered.append)
    server, w = Server(), MlflowWriter()
    server.down = True
    w.submit(server.write, "held here")
    w.drain()
    copy = pickle.loads(pickle.dumps(w))  # Tune's saved experiment; a ray:// driver
    assert (w.held, copy.held) == (1, 0)
    server.down = False
    copy.submit(server.write, "from the copy", wait=True)
    assert server.log == ["from the copy"]
    assert len(registered) == 2  # each waits for its own writes at exit, once
