"""One driver per sweep, on a local or NFS folder and on an object store.

The lock is a folder ``driver.lock/`` in the experiment folder holding numbered claims:
``00000001`` (who holds the sweep: host, pid, a token; never rewritten) and its heartbeat
``00000001.beat`` (rewritten by the holder every HEARTBEAT_SECONDS). The highest claim holds the
sweep. A claim is made by an exclusive create of the next number, so of two drivers taking over
the same dead claim only one can succeed, and a claim that a live driver made meanwhile is never
removed (compare-and-swap: a hard link on a folder, S3's conditional ``If-None-Match: *`` write).

A claim is taken over only when it is provably dead: its process is gone on this very machine
(same boot, same pid namespace, and that pid is not the process that started then), or the
reader watched its heartbeat not change for STALE_AFTER_SECONDS on the reader's own clock (no two
hosts' clocks are compared). Its holder checks before each heartbeat that the highest claim is
still its own; when it is not, it stops its sweep (``on_lost``) and writes nothing more.
Written by hand: Tune has no notion of a second driver on one experiment.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime

from orchestrator.persistence import storage

__all__ = ["LOCK_FOLDER", "DriverLock", "Identity", "LockUnavailable", "SweepBusy", "hold"]

LOCK_FOLDER = "driver.lock"
HEARTBEAT_SECONDS = 20
STALE_AFTER_SECONDS = 90  # a claim whose heartbeat has not changed for this long is dead
READ_ATTEMPTS = 3  # a failed read is retried, never taken for "no lock"


class SweepBusy(Exception):
    """Another live driver holds the sweep."""


class LockUnavailable(Exception):
    """The sweep's lock could not be read or written: whether another driver holds it is unknown."""


@dataclass(frozen=True)
class Identity:
    """A driver process, as exactly as the machine allows: on Linux its boot, pid namespace and
    the pid's start time make a reused pid or a restarted container another process."""

    host: str
    pid: int
    machine: str = ""  # boot id + pid namespace: "" where there is no /proc
    start: str = ""  # the process's start time, in clock ticks since boot
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: str = field(default_factory=lambda: datetime.now().strftime("%Y-%m-%d %H:%M:%S"))

    @classmethod
    def here(cls) -> Identity:
        pid = os.getpid()
        return cls(host=socket.gethostname(), pid=pid, machine=_machine(), start=_process_start(pid) or "")

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (since {self.started})"

    def process_gone(self) -> bool:
        """True when this claim's process provably no longer runs (read on its own machine)."""
        if not self.machine or self.machine != _machine() or self.host != socket.gethostname():
            return False
        return _process_start(self.pid) != self.start


def _machine() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22, after the command name
    except (OSError, IndexError):
        return None


# --- where the claims live -----------------------------------------------------------------------


class _Folder:
    """Claims in a local (or NFS) folder: written whole under a name of their own, then
    hard-linked to their number, which fails when the number exists (atomic on NFS too)."""

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment
        self.path = os.path.join(experiment.removeprefix("file://"), LOCK_FOLDER)

    def names(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except FileNotFoundError:
            return []

    def read(self, name: str) -> bytes | None:
        try:
            with open(os.path.join(self.path, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _whole(self, data: bytes) -> str:
        os.makedirs(self.path, exist_ok=True)
        temporary = os.path.join(self.path, f".{uuid.uuid4().hex}.part")
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return temporary

    def create(self, name: str, data: bytes) -> bool:
        temporary = self._whole(data)
        try:
            os.link(temporary, os.path.join(self.path, name))
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return self._create_exclusive(name, data)  # no hard links here (FUSE mounts of buckets, SMB)
        finally:
            os.unlink(temporary)

    def _create_exclusive(self, name: str, data: bytes) -> bool:
        """O_EXCL: as exclusive, but a crash between the create and the write leaves it empty
        (judged like any claim its holder stopped renewing)."""
        try:
            fd = os.open(os.path.join(self.path, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def write(self, name: str, data: bytes) -> None:
        os.replace(self._whole(data), os.path.join(self.path, name))

    def remove(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.path, name))
        except FileNotFoundError:
            pass

    def tidy(self) -> None:
        try:
            os.rmdir(self.path)  # only when empty: a claim made meanwhile stays
        except OSError:
            pass


class _S3:
    """Claims on S3 or an S3-compatible server (MinIO, moto): created with a conditional write
    (``If-None-Match: *``), which the server refuses when the key exists."""

    def __init__(self, experiment: str) -> None:
        import boto3  # endpoint and credentials from the environment, as pyarrow and Tune take them

        self.experiment = experiment
        bucket_and_key = experiment.split("://", 1)[1]
        self.bucket, _, prefix = bucket_and_key.partition("/")
        self.prefix = f"{prefix.strip('/')}/{LOCK_FOLDER}/".lstrip("/")
        self.path = f"s3://{self.bucket}/{self.prefix.rstrip('/')}"
        self.client = boto3.client("s3")

    def _code(self, err) -> str:
        return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))

    def names(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return [o["Key"][len(self.prefix) :] for page in pages for o in page.get("Contents", [])]

    def read(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def create(self, name: str, data: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data, IfNoneMatch="*")
            return True
        except self.client.exceptions.ClientError as err:
            if self._code(err) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    def write(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def remove(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)

    def tidy(self) -> None:
        pass


class _ObjectStore:
    """Claims on another object store (gs://…), through pyarrow, which has no conditional write:
    a claim is written and read back after a pause. Two drivers starting within that pause of
    each other may both proceed; each is then stopped by its heartbeat's check but one."""

    SETTLE_SECONDS = 2

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment
        self.folder = storage.join(experiment, LOCK_FOLDER)
        self.path = self.folder

    def names(self) -> list[str]:
        return storage.file_names(self.folder, strict=True)

    def read(self, name: str) -> bytes | None:
        return storage.read_bytes(self.folder, name, only_missing_is_none=True)

    def create(self, name: str, data: bytes) -> bool:
        if self.read(name) is not None:
            return False
        storage.write_text(self.folder, name, data.decode())
        time.sleep(self.SETTLE_SECONDS)
        return self.read(name) == data

    def write(self, name: str, data: bytes) -> None:
        storage.write_text(self.folder, name, data.decode())

    def remove(self, name: str) -> None:
        storage.remove(self.folder, name)

    def tidy(self) -> None:
        pass


class _Legacy:
    """The single lock file of earlier versions, at the lock folder's path."""

    def __init__(self, store) -> None:
        self.experiment = store.experiment
        self.path = storage.join(self.experiment, LOCK_FOLDER)

    def read(self) -> bytes | None:
        if storage.is_local(self.experiment) and not os.path.isfile(self.path.removeprefix("file://")):
            return None
        return storage.read_bytes(self.experiment, LOCK_FOLDER)

    def remove(self) -> None:
        storage.remove(self.experiment, LOCK_FOLDER)


def _store(experiment: str):
    if storage.is_local(experiment):
        return _Folder(experiment)
    if experiment.startswith("s3://"):
        return _S3(experiment)
    return _ObjectStore(experiment)


# --- the lock ---------------------------------------------------------------------------------------

BEAT = ".beat"


def _claim_name(number: int) -> str:
    return f"{number:08d}"


class DriverLock:
    """The lock of the sweep in ``experiment`` as held (or sought) by the driver ``me``."""

    def __init__(
        self,
        experiment: str,
        name: str,
        me: Identity | None = None,
        *,
        on_lost: Callable[[str], None] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.store = _store(experiment)
        self.name = name
        self.me = me or Identity.here()
        self.on_lost = on_lost or (lambda message: print(message, file=sys.stderr, flush=True))
        self.say = say or (lambda line: print(line, flush=True))
        self.number: int | None = None  # the claim this driver holds
        self.lost: str | None = None  # why it no longer holds the sweep
        self._beat = threading.Lock()  # a heartbeat's check and write, never after release
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading, never taking an error for "no lock" -------------------------------------------
    def _retrying(self, what: str, fn):
        if self._in_heartbeat():  # the heartbeat does not wait: its next beat is the retry
            return fn()
        for attempt in range(READ_ATTEMPTS):
            try:
                return fn()
            except Exception as err:
                if attempt + 1 == READ_ATTEMPTS:
                    raise LockUnavailable(
                        f"cannot read the lock of sweep {self.name} at {self.store.path} ({what}: "
                        f"{storage.reason(err)}); not knowing whether another driver runs it, "
                        f"this one does not start"
                    ) from None
                time.sleep(1)

    def _in_heartbeat(self) -> bool:
        return threading.current_thread() is self._thread

    def newest(self) -> int | None:
        """The number of the highest claim, or None when there is none."""
        names = self._retrying("listing", self.store.names)
        numbers = [int(n) for n in names if n.isdigit()]
        return max(numbers, default=None)

    def claim(self, number: int) -> tuple[Identity | None, bytes | None]:
        """Claim ``number``'s holder (None when its file is empty or unreadable JSON) and its raw text."""
        data = self._retrying("reading", lambda: self.store.read(_claim_name(number)))
        try:
            return Identity(**json.loads(data)), data
        except (TypeError, ValueError):  # empty (a crash mid-create, on a store without whole files) or foreign
            return None, data

    def heartbeat(self, number: int) -> bytes | None:
        return self._retrying("reading", lambda: self.store.read(_claim_name(number) + BEAT))

    def where(self, number: int | None = None) -> str:
        return f"{self.store.path}/{_claim_name(number)}" if number is not None else self.store.path

    # --- taking the sweep -----------------------------------------------------------------------
    def acquire(self) -> None:
        """Hold the sweep, or raise SweepBusy (a live driver holds it) / LockUnavailable."""
        self._retire_legacy()
        while True:
            number = self.newest()
            if number is None:
                if self._create(1):
                    return
                time.sleep(0.1)  # another driver claimed it first (or a listing lags): judge that claim
                continue
            holder, _ = self.claim(number)
            try:
                self._judge(number, holder)  # returns only when that claim is dead
            except _Again:
                continue
            if self._create(number + 1):
                self._remove_before(number + 1)
                return
            # a third driver took it over first: judged afresh

    def _remove_before(self, number: int) -> None:
        """Tidy the dead claims below ``number`` (best effort: the highest claim decides)."""
        try:
            for name in self.store.names():
                if name.split(".")[0].isdigit() and int(name.split(".")[0]) < number:
                    self.store.remove(name)
        except Exception:
            pass

    def _retire_legacy(self) -> None:
        """A lock file of resnet-sweep before the claims (one ``driver.lock`` file, rewritten by
        its heartbeat): judged like a claim, and removed once dead."""
        legacy = _Legacy(self.store)
        data = legacy.read()
        if data is None:
            return
        try:
            lock = json.loads(data)
            holder = Identity(
                host=str(lock["host"]),
                pid=int(lock["pid"]),
                token=str(lock.get("token", "")),
                started=str(lock.get("started", "?")),
            )
        except (TypeError, ValueError, KeyError):
            holder = None
        self._watch(holder.describe() if holder else f"an unreadable lock ({legacy.path})", legacy.path, legacy.read)
        legacy.remove()

    def _judge(self, number: int, holder: Identity | None) -> None:
        """Returns when claim ``number`` is dead; SweepBusy when its holder is alive."""
        who = holder.describe() if holder is not None else f"an unreadable claim ({self.where(number)})"
        if holder is not None and holder.machine and holder.machine == self.me.machine and holder.host == self.me.host:
            if holder.process_gone():
                return
            raise self._busy(who, self.where(number))
        self._watch(who, self.where(number), lambda: self.heartbeat(number), replaced=lambda: self.newest() != number)

    def _watch(
        self, who: str, where: str, read: Callable[[], bytes | None], replaced: Callable[[], bool] = lambda: False
    ) -> None:
        """Returns once ``read()`` has not changed for STALE_AFTER_SECONDS on this machine's
        clock; SweepBusy as soon as it changes (its driver is alive)."""
        first, since = read(), time.monotonic()
        self.say(
            f"checking whether the sweep's driver ({who}) is alive: taken over if its heartbeat does not change "
            f"for {STALE_AFTER_SECONDS:g} s (the lock: {where})"
        )
        while time.monotonic() - since < STALE_AFTER_SECONDS:
            time.sleep(min(1.0, STALE_AFTER_SECONDS / 10))
            if replaced():  # taken over or released meanwhile: judged afresh
                raise _Again()
            if read() != first:
                raise self._busy(who, where)

    def _busy(self, who: str, where: str) -> SweepBusy:
        return SweepBusy(
            f"sweep {self.name} is already being run by {who}: wait for it to end or stop it first (the lock: {where})"
        )

    def _create(self, number: int) -> bool:
        data = json.dumps(asdict(self.me)).encode()
        try:
            if not self.store.create(_claim_name(number), data):
                return False
        except Exception as err:
            raise self._unwritable(err) from None
        try:
            self.store.write(_claim_name(number) + BEAT, self._beat_data(0))
        except Exception as err:
            try:
                self.store.remove(_claim_name(number))
            except Exception:
                pass
            raise self._unwritable(err) from None
        self.number = number
        return True

    def _unwritable(self, err: Exception) -> LockUnavailable:
        return LockUnavailable(
            f"cannot write the lock of sweep {self.name} at {self.store.path} "
            f"({storage.reason(err)}); this driver does not start"
        )

    def _beat_data(self, count: int) -> bytes:
        return json.dumps({"token": self.me.token, "count": count, "at": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()

    # --- holding it ---------------------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._heartbeats, name="driver-lock", daemon=True)
        self._thread.start()

    def _heartbeats(self) -> None:
        """Renew the claim every HEARTBEAT_SECONDS, after checking that it still holds the sweep.
        A driver that cannot renew it for STALE_AFTER_SECONDS − 2 beats stops as if taken over:
        another driver may judge it dead only after watching it that long and more, so two
        drivers never both run the sweep."""
        count, renewed, warned = 0, time.monotonic(), False
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._beat:
                if self._stop.is_set():
                    return
                where = self.where(self.number)
                try:
                    taker = self._taken_by()
                    if taker is None:
                        count += 1
                        self.store.write(_claim_name(self.number) + BEAT, self._beat_data(count))
                        renewed, warned = time.monotonic(), False
                        continue
                    self.lost = (
                        f"error: sweep {self.name} was taken over by {taker} (the lock: {where}); this "
                        f"driver stops and leaves the sweep to it"
                    )
                except Exception as err:
                    failing = time.monotonic() - renewed
                    give_up = STALE_AFTER_SECONDS - 2 * HEARTBEAT_SECONDS
                    if failing < give_up:
                        if not warned:
                            print(
                                f"warning: the sweep's lock at {where} cannot be renewed ({storage.reason(err)}); "
                                f"this driver stops if it cannot for {give_up:g} s (another may then take the "
                                f"sweep over)",
                                file=sys.stderr,
                                flush=True,
                            )
                            warned = True
                        continue
                    self.lost = (
                        f"error: sweep {self.name}: this driver could not renew its lock ({where}) for "
                        f"{failing:.0f} s ({storage.reason(err)}); another driver may take the sweep over, "
                        f"so this one stops (resume the sweep once its storage answers)"
                    )
                self._stop.set()
                self.on_lost(self.lost)  # under the lock: release() returns only after it
                return

    def _taken_by(self) -> str | None:
        """Who holds the sweep now, when it is no longer this driver."""
        newest = self.newest()
        holder, _ = self.claim(self.number)
        if newest == self.number and holder is not None and holder.token == self.me.token:
            return None
        if newest is None:
            return "nobody (its lock was removed)"
        other, _ = self.claim(newest)
        return other.describe() if other is not None else f"the claim {self.where(newest)}"

    def release(self) -> None:
        """Stop the heartbeat (a write in flight finishes first: none follows) and remove this
        driver's claim when it still holds the sweep."""
        with self._beat:
            self._stop.set()
        if self.number is None or self.lost:
            return
        try:
            holder, _ = self.claim(self.number)
            if holder is not None and holder.token == self.me.token and self.newest() == self.number:
                self.store.remove(_claim_name(self.number) + BEAT)
                self.store.remove(_claim_name(self.number))
                self.store.tidy()
        except Exception as err:
            print(
                f"warning: the sweep's lock at {self.where(self.number)} was not removed ({storage.reason(err)})",
                file=sys.stderr,
                flush=True,
            )


class _Again(Exception):
    """The claim being judged was replaced meanwhile."""


@contextmanager
def hold(folder: str, name: str, *, on_lost: Callable[[str], None] | None = None) -> Iterator[DriverLock]:
    """Hold the sweep in ``folder`` while the block runs; SweepBusy when a live driver has it,
    LockUnavailable when its lock cannot be read. ``on_lost`` is called (from the heartbeat's
    thread) if another driver takes the sweep over, after this driver's storage stalled."""
    lock = DriverLock(folder, name, on_lost=on_lost)
    lock.acquire()
    lock.start_heartbeat()
    try:
        yield lock
    finally:
        lock.release()
