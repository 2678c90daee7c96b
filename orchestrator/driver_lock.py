"""One driver per sweep: a lock file in the experiment folder names the live driver (host, pid)
and carries a heartbeat, so a second `run --resume-if-exists` / `resume` of the same sweep is
refused instead of fighting the first over the same folder. Works on local folders and on
object stores (no atomic create there: the write is read back). A lock left by a crash is
recognised as stale — its pid is gone on this host, or its heartbeat stopped elsewhere. Written
by hand: Tune has no notion of a second driver on one experiment."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime

from . import storage

__all__ = ["LOCK_FILE", "SweepBusy", "hold"]

LOCK_FILE = "driver.lock"
HEARTBEAT_SECONDS = 20
STALE_AFTER_SECONDS = 90  # a driver on another host that has not written for this long is gone


class SweepBusy(Exception):
    """Another live driver holds the sweep."""


def _holder_alive(lock: dict) -> bool:
    if lock.get("host") == socket.gethostname():
        try:
            os.kill(int(lock["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError):
            return True
        return True
    return time.time() - float(lock.get("heartbeat", 0)) < STALE_AFTER_SECONDS


def _read(folder: str) -> dict | None:
    text = storage.read_text(folder, LOCK_FILE)
    try:
        return json.loads(text) if text else None
    except ValueError:  # a torn write: treat as no lock
        return None


def _describe(lock: dict) -> str:
    return f"pid {lock.get('pid')} on {lock.get('host')} (since {lock.get('started', '?')})"


@contextmanager
def hold(folder: str, name: str, *, wait_for_other_host: bool = False):
    """Hold the sweep in ``folder`` while the block runs; SweepBusy when a live driver has it.
    ``wait_for_other_host``: a lock from another host may be a driver that just died (a lost
    Kubernetes head pod): wait until its heartbeat is stale instead of failing at once."""
    token = uuid.uuid4().hex
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
            "started": datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
    deadline = time.time() + STALE_AFTER_SECONDS + HEARTBEAT_SECONDS
    while (other := _read(folder)) and other.get("token") != token and _holder_alive(other):
        if not (wait_for_other_host and other.get("host") != lock["host"] and time.time() < deadline):
            raise SweepBusy(f"sweep {name} is already being run by {_describe(other)}: wait for it to end or stop "
                            f"it first (the lock: {storage.join(folder, LOCK_FILE)})")
        print(f"waiting for the sweep's previous driver ({_describe(other)}) to go quiet…", flush=True)
        time.sleep(HEARTBEAT_SECONDS)
    if other is not None:  # stale: its driver is gone
        storage.remove(folder, LOCK_FILE)
    if not _create(folder, lock) or (_read(folder) or {}).get("token") != token:
        raise SweepBusy(f"sweep {name} was taken by another driver at the same moment: {_describe(_read(folder) or {})}")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(folder, lock, stop), name="driver-lock", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join(timeout=5)
        if (_read(folder) or {}).get("token") == token:
            storage.remove(folder, LOCK_FILE)


def _create(folder: str, lock: dict) -> bool:
    """Write the lock unless one exists: atomic on a local folder (O_EXCL); an object store has
    no exclusive create, so there the caller reads the lock back (the last writer holds it)."""
    if not storage.is_local(folder):
        _write(folder, lock)
        return True
    try:
        fd = os.open(os.path.join(folder, LOCK_FILE), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({**lock, "heartbeat": time.time()}))
    return True


def _write(folder: str, lock: dict) -> None:
    storage.write_text(folder, LOCK_FILE, json.dumps({**lock, "heartbeat": time.time()}))


def _heartbeat(folder: str, lock: dict, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            _write(folder, lock)
        except Exception:  # noqa: BLE001 — storage briefly unreachable: the next beat retries
            pass
