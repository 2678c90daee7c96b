"""An in-memory MLflow tracking store with the MlflowClient methods the tracker calls, and faults
on command: the server down, a write whose answer is lost after it was made, a call held until
released. It keeps every point it is sent (a point sent twice is seen twice), as a store would.
(Optuna's InMemoryStorage is the model: a real store's behaviour, none of its persistence.)"""

from __future__ import annotations

import itertools
import re
import threading
import time
from types import SimpleNamespace


class Unreachable(ConnectionError):
    """What a request to a dead server raises."""


class FakeMlflow:
    def __init__(self) -> None:
        self.experiments: dict[str, str] = {}
        self.runs: dict[str, SimpleNamespace] = {}
        self.down = False
        self.lost_answers: dict[str, int] = {}  # method → how many of its next calls are made, then fail
        self.holds: dict[str, tuple[threading.Event, threading.Event]] = {}  # method → (reached, release)
        self.delay_s: dict[str, float] = {}  # method → seconds each call takes
        self.calls: list[str] = []
        self._ids = itertools.count()
        self._lock = threading.Lock()

    # --- faults -----------------------------------------------------------------------------------
    def lose_answer(self, method: str, times: int = 1) -> None:
        self.lost_answers[method] = times

    def hold(self, method: str) -> tuple[threading.Event, threading.Event]:
        """The next call of ``method`` waits for the second event; the first is set once it waits."""
        reached, release = threading.Event(), threading.Event()
        self.holds[method] = (reached, release)
        return reached, release

    def _request(self, method: str, apply):
        self.calls.append(method)
        if method in self.holds:
            reached, release = self.holds.pop(method)
            reached.set()
            release.wait(10)
        if self.delay_s.get(method):
            time.sleep(self.delay_s[method])
        if self.down:
            raise Unreachable(f"{method}: connection refused")
        with self._lock:
            value = apply()
        if self.lost_answers.get(method):
            self.lost_answers[method] -= 1
            raise Unreachable(f"{method}: connection reset after the request was made")
        return value

    # --- what a test reads back ----------------------------------------------------------------------
    def active_runs(self, role: str = "trial") -> list[SimpleNamespace]:
        return [r for r in self.runs.values() if not r.deleted and r.data.tags.get("resnet_sweep.role") == role]

    def points(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.runs[run_id].history.get(key, [])]

    # --- the client's methods ---------------------------------------------------------------------------
    def get_experiment_by_name(self, name):
        return self._request(
            "get_experiment_by_name",
            lambda: SimpleNamespace(experiment_id=self.experiments[name]) if name in self.experiments else None,
        )

    def create_experiment(self, name):
        return self._request("create_experiment", lambda: self.experiments.setdefault(name, str(len(self.experiments))))

    def create_run(self, experiment_id, run_name=None, tags=None):
        def apply():
            run_id = f"run{next(self._ids)}"
            self.runs[run_id] = SimpleNamespace(
                info=SimpleNamespace(run_id=run_id, run_name=run_name, status="RUNNING", start_time=time.time_ns()),
                data=SimpleNamespace(tags=dict(tags or {}), params={}, metrics={}),
                experiment_id=experiment_id,
                history={},
                artifacts={},
                deleted=False,
            )
            return self.runs[run_id]

        return self._request("create_run", apply)

    def search_runs(self, experiment_ids, filter_string="", max_results=1000):
        wanted = dict(re.findall(r"tags\.`([^`]+)` = '([^']*)'", filter_string))
        return self._request(
            "search_runs",
            lambda: [
                r
                for r in self.runs.values()
                if r.experiment_id in experiment_ids
                and not r.deleted
                and all(r.data.tags.get(k) == v for k, v in wanted.items())
            ][:max_results],
        )

    def get_run(self, run_id):
        return self._request("get_run", lambda: self.runs[run_id])

    def get_metric_history(self, run_id, key):
        return self._request("get_metric_history", lambda: list(self.runs[run_id].history.get(key, [])))

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        def apply():
            run = self.runs[run_id]
            for m in metrics:
                run.history.setdefault(m.key, []).append(m)
                run.data.metrics[m.key] = m.value
            run.data.params.update({p.key: p.value for p in params})
            run.data.tags.update({t.key: t.value for t in tags})

        return self._request("log_batch", apply)

    def set_tag(self, run_id, key, value):
        return self._request("set_tag", lambda: self.runs[run_id].data.tags.__setitem__(key, value))

    def update_run(self, run_id, status=None, name=None):
        return self._request("update_run", lambda: setattr(self.runs[run_id].info, "status", status))

    def set_terminated(self, run_id, status="FINISHED"):
        return self._request("set_terminated", lambda: setattr(self.runs[run_id].info, "status", status))

    def delete_run(self, run_id):
        return self._request("delete_run", lambda: setattr(self.runs[run_id], "deleted", True))

    def _artifact(self, method, run_id, path, value):
        return self._request(method, lambda: self.runs[run_id].artifacts.__setitem__(path, value))

    def log_text(self, run_id, text, artifact_file):
        return self._artifact("log_text", run_id, artifact_file, text)

    def log_dict(self, run_id, dictionary, artifact_file):
        return self._artifact("log_dict", run_id, artifact_file, dictionary)

    def log_image(self, run_id, image, artifact_file):
        return self._artifact("log_image", run_id, artifact_file, image)
