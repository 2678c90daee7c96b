"""One driver per sweep under contention and faults: drivers on other hosts (identities of their
own) in threads of this process, on a local folder and on a real S3-compatible server (moto),
with the heartbeat and stale times shortened. Each scenario ends with exactly one driver holding
the sweep and every other one told why, naming the lock by its path."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from orchestrator.persistence import driver_lock
from orchestrator.persistence.driver_lock import DriverLock, Identity, LockUnavailable, SweepBusy

BEAT, STALE = 0.1, 1.0


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(driver_lock, "HEARTBEAT_SECONDS", BEAT)
    monkeypatch.setattr(driver_lock, "STALE_AFTER_SECONDS", STALE)


@pytest.fixture(params=[pytest.param("folder", marks=pytest.mark.unit), "s3"])
def sweep(request, tmp_path, monkeypatch):
    """The experiment folder: a local one, or a prefix on a real S3-compatible server."""
    if request.param == "folder":
        return str(tmp_path / "sweep")
    server = request.getfixturevalue("s3_server")
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{server.bucket}/sweeps/small"


def on(host: str) -> Identity:
    """A driver on another host (its pid means nothing here)."""
    return Identity(host=host, pid=4242)


class Flaky:
    """A driver's view of the storage that fails on command (an NFS stall, a dropped request)
    and counts what it writes."""

    def __init__(self, store) -> None:
        self.store, self.down, self.fail_reads, self.writes = store, False, 0, []

    def __getattr__(self, name):
        return getattr(self.store, name)

    def _check(self, reading: bool = False) -> None:
        if self.down:
            raise OSError("stale file handle")
        if reading and self.fail_reads:
            self.fail_reads -= 1
            raise OSError("connection reset by peer")

    def names(self):
        self._check(reading=True)
        return self.store.names()

    def read(self, name):
        self._check(reading=True)
        return self.store.read(name)

    def write(self, name, data):
        self._check()
        self.writes.append((time.monotonic(), name))
        return self.store.write(name, data)

    def create(self, name, data):
        self._check()
        return self.store.create(name, data)


def holding(lock: DriverLock) -> DriverLock:
    lock.acquire()
    lock.start_heartbeat()
    return lock


def holder_of(sweep: str) -> str | None:
    """The host of the driver that holds the sweep now, read by a bystander."""
    reader = DriverLock(sweep, "small", on("bystander"))
    number = reader.newest()
    return None if number is None else reader.claim(number)[0].host


def test_a_stalled_driver_stops_before_another_can_take_the_sweep_over(sweep):
    """A driver whose storage stalls (an NFS hiccup, a paused VM) cannot renew its claim: it stops
    before the stale time is up, so the driver that takes the sweep over then (having watched the
    claim not change for the stale time) never runs beside it; nothing is written after either."""
    lost = []
    a = DriverLock(sweep, "small", on("node-a"), on_lost=lambda line: lost.append((time.monotonic(), line)))
    a.store = Flaky(a.store)
    holding(a)
    time.sleep(1.5 * BEAT)
    a.store.down = True  # its storage stalls: no heartbeat gets through
    said = []
    b = holding(DriverLock(sweep, "small", on("node-b"), say=said.append))
    taken = time.monotonic()
    assert b.number == 2 and holder_of(sweep) == "node-b"
    assert said and "pid 4242 on node-a" in said[0] and f"{a.store.path}/00000001" in said[0]
    assert len(lost) == 1 and lost[0][0] < taken, (lost, taken)  # it had stopped first
    assert lost[0][1] == a.lost and a.lost.startswith("error: sweep small: this driver could not renew its lock (")
    assert "OSError: stale file handle" in a.lost and "so this one stops" in a.lost
    a.store.down, back = False, time.monotonic()  # … and comes back: it stays stopped
    time.sleep(3 * BEAT)
    assert [w for w in a.store.writes if w[0] > back] == [] and len(lost) == 1
    assert holder_of(sweep) == "node-b" and b.lost is None and b._taken_by() is None
    a.release()  # a driver that lost the sweep removes nothing
    assert holder_of(sweep) == "node-b"
    b.release()
    assert holder_of(sweep) is None


def test_a_driver_finds_its_sweep_taken_over_at_its_next_heartbeat(sweep):
    lost = []
    a = holding(DriverLock(sweep, "small", on("node-a"), on_lost=lost.append))
    b = DriverLock(sweep, "small", on("node-b"))
    assert b._create(a.number + 1)  # what a driver that judged it dead does
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lost == [a.lost] and a.lost.startswith("error: sweep small was taken over by pid 4242 on node-b ")
    assert a.lost.endswith(f"(the lock: {a.store.path}/00000001); this driver stops and leaves the sweep to it")
    a.release()
    assert holder_of(sweep) == "node-b"


def dead_claim(sweep: str) -> None:
    """A claim whose driver died on another host (its heartbeat never changes again)."""
    dead = DriverLock(sweep, "small", on("node-dead"))
    dead.acquire()  # no heartbeat thread: it died right after


def test_two_drivers_on_one_dead_lock_one_takes_it_and_the_other_is_told(sweep):
    dead_claim(sweep)
    locks = {host: DriverLock(sweep, "small", on(host), say=lambda line: None) for host in ("node-b", "node-c")}
    outcome = {}

    def contend(host):
        try:
            holding(locks[host])
            outcome[host] = "holds"
        except SweepBusy as err:
            outcome[host] = str(err)

    threads = [threading.Thread(target=contend, args=(host,)) for host in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [host for host, what in outcome.items() if what == "holds"]
    assert len(winners) == 1, outcome
    (loser,) = set(locks) - set(winners)
    assert outcome[loser].startswith(f"sweep small is already being run by pid 4242 on {winners[0]} ")
    assert outcome[loser].endswith(f"(the lock: {locks[loser].store.path}/00000002)")
    assert holder_of(sweep) == winners[0]
    locks[winners[0]].release()
    assert holder_of(sweep) is None


def test_a_failed_read_is_never_taken_for_no_lock(sweep):
    a = holding(DriverLock(sweep, "small", on("node-a")))
    b = DriverLock(sweep, "small", on("node-b"), say=lambda line: None)
    b.store = Flaky(b.store)
    b.store.fail_reads = 1  # one dropped request, then the lock is read: a's, alive
    with pytest.raises(SweepBusy, match="already being run by pid 4242 on node-a"):
        b.acquire()
    b.store.fail_reads = driver_lock.READ_ATTEMPTS  # the storage does not answer at all
    with pytest.raises(LockUnavailable) as err:
        b.acquire()
    assert str(err.value).startswith(f"cannot read the lock of sweep small at {b.store.path} (listing: OSError: ")

    assert holder_of(sweep) == "node-a" and b.number is None
    a.release()


@pytest.mark.unit
def test_a_storage_that_takes_no_claim_is_one_line_and_keeps_none(tmp_path):
    sweep = str(tmp_path / "sweep")
    lock = DriverLock(sweep, "small", on("node-a"))
    lock.store = Flaky(lock.store)

    def full(name, data):
        raise OSError(28, "No space left on device")

    lock.store.write = full  # the claim is made, its first heartbeat is not
    with pytest.raises(LockUnavailable) as err:
        lock.acquire()
    assert str(err.value) == (
        f"cannot write the lock of sweep small at {lock.store.path} (OSError: [Errno 28] No "
        f"space left on device); this driver does not start"
    )
    assert holder_of(sweep) is None and lock.number is None


@pytest.mark.unit
def test_a_folder_without_hard_links_still_takes_one_claim_at_a_time(tmp_path, monkeypatch):
    """FUSE mounts of buckets and SMB shares refuse hard links: an exclusive create instead."""
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    sweep = str(tmp_path / "sweep")
    a = holding(DriverLock(sweep, "small", on("node-a")))
    assert not DriverLock(sweep, "small", on("node-b")).store.create("00000001", b"{}")
    with pytest.raises(SweepBusy, match="pid 4242 on node-a"):
        DriverLock(sweep, "small", on("node-b"), say=lambda line: None).acquire()
    a.release()
    assert holder_of(sweep) is None


@pytest.mark.unit
def test_a_restarted_container_with_the_same_host_and_pid_is_not_locked_out(tmp_path):
    """The claim names this host and a live pid (this very process), but another boot or pid
    namespace: a container restarted in the same pod. The pid proves nothing; its heartbeat,
    watched for the stale time, does."""
    sweep = str(tmp_path / "sweep")
    me = Identity.here()
    DriverLock(
        sweep, "small", Identity(host=me.host, pid=me.pid, machine="another-boot/4026531836", start="1")
    ).acquire()
    t0 = time.monotonic()
    lock = holding(DriverLock(sweep, "small", say=lambda line: None))
    assert STALE <= time.monotonic() - t0 < 10 * STALE and lock.number == 2
    lock.release()


def test_a_reused_pid_on_this_machine_is_taken_over_at_once_and_a_live_driver_never(tmp_path):
    sweep = str(tmp_path / "sweep")
    me = Identity.here()
    DriverLock(sweep, "small", Identity(host=me.host, pid=me.pid, machine=me.machine, start="1")).acquire()
    t0 = time.monotonic()
    lock = holding(DriverLock(sweep, "small"))
    assert time.monotonic() - t0 < STALE and lock.number == 2  # the pid runs another process: no wait
    lock.release()

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = Identity(host=me.host, pid=live.pid, machine=me.machine, start=driver_lock._process_start(live.pid))
        DriverLock(sweep, "small", other).acquire()
        with pytest.raises(SweepBusy, match=f"already being run by pid {live.pid} on {socket.gethostname()}"):
            DriverLock(sweep, "small").acquire()  # its heartbeat may be old (stopped with Ctrl-Z): still alive
    finally:
        live.kill()
        live.wait()
    t0 = time.monotonic()
    lock = holding(DriverLock(sweep, "small"))  # gone now: taken over at once
    assert time.monotonic() - t0 < STALE and lock.number == 2
    lock.release()


@pytest.mark.unit
@pytest.mark.parametrize("where", ["claim", "lock file of an earlier version"])
def test_an_empty_lock_is_named_by_its_path_and_taken_over_once_stale(tmp_path, where):
    sweep = tmp_path / "sweep"
    if where == "claim":
        (sweep / "driver.lock").mkdir(parents=True)
        empty = sweep / "driver.lock" / "00000001"
    else:
        sweep.mkdir()
        empty = sweep / "driver.lock"
    empty.write_bytes(b"")  # a crash (or a full disk) between the create and the write
    said = []
    lock = holding(DriverLock(str(sweep), "small", say=said.append))
    assert len(said) == 1 and f"({empty})" in said[0] and "None" not in said[0]
    assert holder_of(str(sweep)) == socket.gethostname()
    lock.release()
    assert not (sweep / "driver.lock").exists()


def test_no_write_after_release_returns(sweep, monkeypatch):
    lock = DriverLock(sweep, "small", on("node-a"))
    lock.store = Flaky(lock.store)
    slow = lock.store.write

    def write(name, data):
        time.sleep(3 * BEAT)  # a heartbeat write in flight when the sweep ends
        return slow(name, data)

    lock.store.write = write
    holding(lock)
    time.sleep(1.5 * BEAT)
    lock.release()
    released = time.monotonic()
    time.sleep(5 * BEAT)
    assert [w for w in lock.store.writes if w[0] > released] == []
    assert holder_of(sweep) is None
    if not sweep.startswith("s3://"):
        assert not os.path.exists(os.path.join(sweep, "driver.lock"))


@pytest.mark.slow  # a real sweep until its next heartbeat (20 s)
def test_a_driver_whose_sweep_was_taken_over_stops_and_writes_nothing_more(tmp_path):
    """A real `resnet-sweep run` whose lock another driver took over (as after a storage stall):
    at its next heartbeat it says so in one line, stops its trials as on Ctrl-C (Tune's state
    saved), leaves MLflow to the new driver, and exits 1."""
    import re

    from mlflow import MlflowClient

    from tests.support import SMALL_GRID, child_runs

    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=5000) + "max_concurrent: 1\n")
    exe = os.path.join(os.path.dirname(sys.executable), "resnet-sweep")
    proc = subprocess.Popen(
        [exe, "run", "small.yaml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.match(r"^\[\d\d:\d\d\] epoch +2/", line):
            break
    sweep = str(tmp_path / "ray_results" / "small")
    taker = DriverLock(sweep, "small", on("node-b"))
    assert taker._create(taker.newest() + 1)  # what a driver that judged this one dead does
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = [
        (r.info.run_id, r.info.status, r.data.tags.get("status"))
        for r in client.search_runs([client.get_experiment_by_name("small").experiment_id])
    ]
    rest = proc.communicate(timeout=300)[0]
    out = "".join(seen) + rest
    assert proc.returncode == 1, out[-3000:]
    lines = [line for line in out.splitlines() if "taken over" in line]
    assert lines and all(line == lines[0] for line in lines), out[-3000:]
    assert lines[0].startswith("error: sweep small was taken over by pid 4242 on node-b ")
    assert "continue the sweep with" not in out  # the sweep is the other driver's now
    (parent,), _ = child_runs(client, "small")
    after = [
        (r.info.run_id, r.info.status, r.data.tags.get("status"))
        for r in client.search_runs([client.get_experiment_by_name("small").experiment_id])
    ]
    assert sorted(after) == sorted(before) and parent.info.status == "RUNNING"  # not ended, not marked interrupted
    assert list((tmp_path / "ray_results" / "small").glob("experiment_state-*.json"))
    assert holder_of(sweep) == "node-b"  # its claim untouched
