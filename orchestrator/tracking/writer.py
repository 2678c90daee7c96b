"""The one thread that makes a sweep's MLflow writes, in order, and holds them through an outage.

Tune's loop, which also takes results and starts trials, hands its writes over instead of waiting
on MLflow (an HTTP round trip per write). One thread makes them, one at a time, in the order they
were handed over, and so also owns whatever state they read and change: two threads deciding a
trial's run made two runs.

A write that fails (the server down, or its answer lost after it was made) is held, and so is
every write after it, so the order is kept; they are replayed in order once MLflow answers again,
retried every RETRY_S, not on every write. Held writes live in this process only: what a driver
takes with it when it dies is sent from Tune's records by `resnet-sweep sync`. A held write is made
again whole, so it must read what it needs from the server, not from what it assumed before the
failure: ``on_outage`` is where the caller forgets that.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from orchestrator.tracking.mlflow_store import redact

__all__ = ["RETRY_S", "TRACKING_FENCE", "MlflowWriter"]

# Set when another driver took this process's sweep over (driver_lock): every writer drops what it
# holds and writes nothing more, so the runs are the new driver's alone. One per process, as the
# takeover is.
TRACKING_FENCE = threading.Event()
RETRY_S = 10  # while MLflow is unreachable, held writes are retried this often


def _nothing() -> None:
    """A job that marks a point in the queue (``drain`` waits for it)."""


class _Done:
    """A job's value, once the writer's thread has made it."""

    def __init__(self) -> None:
        self._event, self.value = threading.Event(), None

    def set(self, value: Any) -> None:
        self.value = value
        self._event.set()

    def wait(self) -> Any:
        self._event.wait()
        return self.value


class MlflowWriter:
    """Makes the writes handed to it on its own thread, in order, holding them while MLflow is down.

    ``submit`` hands over a write; ``run`` runs a job on the thread after the writes before it
    (to read the state they keep, or to make writes together with ``write_now`` and ``flush``);
    ``drain`` and ``flush`` wait. The thread starts with the first job and is made again after a
    copy (pickle: Tune's saved experiment, a ray:// driver), which holds nothing."""

    def __init__(self, on_outage: Callable[[], None] | None = None) -> None:
        self.on_outage = on_outage  # called on the thread each time a write fails
        self._thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue | None = None
        self._at_exit = False
        self._held: list[tuple[Callable, tuple]] = []
        self._retry_at = 0.0
        self._warned = False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_thread": None, "_jobs": None, "_held": [], "_at_exit": False}

    @property
    def held(self) -> int:
        """The writes held until MLflow answers again."""
        return len(self._held)

    def submit(self, fn: Callable, *args, wait: bool = False) -> Any:
        """Hands the write ``fn(*args)`` over: made after every write handed over before it, or
        held with them while MLflow is down. With ``wait``, returns once it is made (its value)
        or held (None). From the writer's own thread (a write that asks for another), it goes to
        the end of the queue and is not waited for."""
        return self._put(fn, args, is_write=True, wait=wait)

    def run(self, fn: Callable, *args) -> Any:
        """``fn(*args)`` on the writer's thread once every write handed over before it is made or
        held; returns its value (None when it raised or the fence is up). Not a write itself: it
        is not held; it may make writes with ``write_now`` and wait for them with ``flush``."""
        return self._put(fn, args, is_write=False, wait=True)

    def drain(self) -> None:
        """Waits until every write handed over is made or held (registered to run at exit)."""
        if self._thread is not None and self._thread.is_alive():
            self.run(_nothing)

    def write_now(self, fn: Callable, *args) -> Any:
        """On the writer's thread (in a job given to ``run``): makes the write now and returns its
        value, or holds it (None) behind the writes already held, which are replayed first once
        the retry time has come."""
        if TRACKING_FENCE.is_set():
            return None
        if self._held and time.monotonic() < self._retry_at:
            self._held.append((fn, args))
            return None
        self._replay()
        if self._held:
            self._held.append((fn, args))
            return None
        try:
            return fn(*args)
        except Exception as err:
            self._held.append((fn, args))
            self._down(err)
            return None

    def flush(self, wait_s: float) -> int:
        """Waits for the writes handed over before it, then sends the held ones, retrying every
        RETRY_S for up to ``wait_s`` (0: one try); returns the writes still held."""
        if threading.current_thread() is not self._thread:
            return self.run(self.flush, wait_s) or 0
        deadline = time.monotonic() + wait_s
        while self._held:
            self._retry_at = 0.0
            self._replay()
            if not self._held or time.monotonic() + RETRY_S > deadline or TRACKING_FENCE.is_set():
                break
            time.sleep(RETRY_S)
        return len(self._held)

    # --- the thread -----------------------------------------------------------------------------
    def _put(self, fn: Callable, args: tuple, *, is_write: bool, wait: bool) -> Any:
        if TRACKING_FENCE.is_set():
            return None
        if threading.current_thread() is self._thread:
            self._jobs.put((fn, args, is_write, None))
            return None
        if self._thread is None or not self._thread.is_alive():
            self._jobs = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._loop, name="mlflow-writer", daemon=True)
            self._thread.start()
            if not self._at_exit:  # once per writer: Tune saves its state hundreds of times
                atexit.register(self.drain)
                self._at_exit = True
        done = _Done() if wait else None
        self._jobs.put((fn, args, is_write, done))
        return done.wait() if done else None

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, is_write, done = job
            value = None
            try:
                if not TRACKING_FENCE.is_set():
                    value = self.write_now(fn, *args) if is_write else fn(*args)
            except Exception as err:
                print(
                    f"warning: MLflow write {fn.__name__} failed: {type(err).__name__}: {redact(str(err))[:300]}",
                    file=sys.stderr,
                    flush=True,
                )
            finally:
                if done is not None:
                    done.set(value)

    def _down(self, err: Exception) -> None:
        self._retry_at = time.monotonic() + RETRY_S
        if self.on_outage is not None:
            self.on_outage()
        if not self._warned:
            print(
                f"warning: MLflow write failed ({type(err).__name__}: {redact(str(err))[:300]}); results are kept "
                f"and sent when it answers again",
                file=sys.stderr,
                flush=True,
            )
            self._warned = True

    def _replay(self) -> None:
        while self._held:
            if TRACKING_FENCE.is_set():  # the sweep is another driver's now: what is held is dropped
                self._held.clear()
                return
            fn, args = self._held.pop(0)
            try:
                fn(*args)
            except Exception as err:
                self._held.insert(0, (fn, args))
                self._down(err)
                return
        if self._warned:
            print("MLflow answers again: the results held back are sent", file=sys.stderr, flush=True)
            self._warned = False
