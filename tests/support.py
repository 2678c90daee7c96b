"""Helpers the tests share: the CLI run as a user runs it, real servers, sweep files and
checks that several test files use. Fixtures stay in conftest.py; a test file imports helpers
from here, never from another test file."""

from __future__ import annotations

import atexit
import functools
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from torchvision.io import encode_jpeg

from orchestrator.vocabulary import final_status
from resnet_core import metrics as M
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tests.ray_nodes import free_port

if TYPE_CHECKING:
    from mlflow import MlflowClient

REPO = Path(__file__).resolve().parent.parent


SWEEPS = REPO / "sweeps"


@functools.cache
def _empty_store() -> Path:
    from mlflow import MlflowClient

    folder = tempfile.mkdtemp(prefix="store")
    atexit.register(shutil.rmtree, folder, True)
    path = Path(folder) / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # MLflow makes it and migrates its schema
    return path


def migrated_store(folder: Path) -> Path:
    """An empty MLflow store at ``folder``/mlflow.db, its schema made by MLflow once per test
    session: a new SQLite store spends 1.5-3 s in MLflow's migrations, which a test that is not
    about a first run need not pay again. Its Default experiment, which no test uses, keeps the
    artifact folder MLflow gave it then: ./mlruns of the folder the test session runs in."""
    return Path(shutil.copyfile(_empty_store(), folder / "mlflow.db"))


def cli(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `resnet-sweep` command as a user would."""
    exe = Path(sys.executable).parent / "resnet-sweep"
    return subprocess.run(
        [str(exe), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """The installed `resnet-sweep ARGS…` started as a user would, its output (both streams) to read."""
    exe = Path(sys.executable).parent / "resnet-sweep"
    return subprocess.Popen(
        [str(exe), *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def runs_holding(uri: str, user: str, secret: str, experiment: str) -> tuple[list, list, list[str]]:
    """The experiment's parent and child runs, read with the login, and those whose params or
    tags hold ``secret``."""
    import json

    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, secret
    try:
        parents, children = child_runs(MlflowClient(uri), experiment)
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
    leaks = [
        f"run {run.info.run_name}"
        for run in parents + children
        if secret in json.dumps({**run.data.params, **run.data.tags})
    ]
    return parents, children, leaks


def kill_when_midway(
    *args: str, cwd: Path, epochs: int, env: dict | None = None, sig: int = signal.SIGKILL
) -> tuple[str, set[str]]:
    """Run `resnet-sweep ARGS…` and SIGKILL it once a trial has finished and another is midway,
    as a crash would (or send ``sig``: SIGINT is Ctrl-C); returns all it printed and the names
    of the finished trials. The exit code is in ``kill_when_midway.returncode``."""
    proc = start(*args, cwd=cwd, env=env)
    seen, done = [], set()
    for line in proc.stdout:
        seen.append(line)
        if m := re.match(r"^\[\d\d:\d\d\] completed (\S+)", line):
            done.add(m.group(1))
        m = re.match(r"^\[\d\d:\d\d\] epoch +(\d+)/\d+ +(\S+)", line)
        if done and m and m.group(2) not in done and int(m.group(1)) < epochs:
            break
    proc.send_signal(sig)
    rest = proc.communicate(timeout=300)[0]
    kill_when_midway.returncode = proc.returncode
    return "".join(seen) + rest, done


def ctrl_c_when(*args: str, cwd: Path, printed: str, before=None) -> str:
    """Run `resnet-sweep ARGS…` and press Ctrl-C (SIGINT) once it prints a line matching the
    regex ``printed`` (``before()`` runs just before the signal); returns all it printed. The
    exit code is in ``ctrl_c_when.returncode``."""
    proc = start(*args, cwd=cwd)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.match(printed, line):
            break
    if before is not None:
        before()
    proc.send_signal(signal.SIGINT)
    seen.append(proc.communicate(timeout=300)[0])
    ctrl_c_when.returncode = proc.returncode
    return "".join(seen)


def descendants(*roots: int) -> list[int]:
    """Every process started, directly or not, by the processes ``roots`` (read from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    found, frontier = [], set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def environments_holding(secret: str, *roots: int) -> list[str]:
    """The processes started by ``roots`` whose environment holds ``secret`` (/proc/PID/environ:
    what each was started with), named by pid and command line."""
    leaks = []
    for pid in descendants(*roots):
        try:
            if secret.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
                leaks.append(f"pid {pid}: {command!r}")
        except OSError:  # ended meanwhile
            pass
    return leaks


def wait_for_server(proc: subprocess.Popen, what: str, ready, timeout: float = 120) -> None:
    """Until ``ready()`` stops raising; the server's process group is killed if it never does."""
    deadline = time.time() + timeout
    while True:
        try:
            ready()
            return
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.5)


S3_KEY_ID, S3_SECRET = "AKIARESNETSWEEPTEST", "s3cr3t-resnet-sweep-do-not-leak-4f1b9c"


class MlflowServer:
    """A real `mlflow server` process on 127.0.0.1 over HTTP, its stores in ``folder``; it can be
    killed and started again on the same port (an outage)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        folder.mkdir(exist_ok=True)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        import urllib.request

        if not (self.folder / "mlflow.db").exists():
            migrated_store(self.folder)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"sqlite:///{self.folder / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.folder / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as k8s/base/mlflow.yaml
        )
        wait_for_server(self.proc, "mlflow server", lambda: urllib.request.urlopen(self.uri + "/health", timeout=2))
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a slow graceful shutdown on a busy machine
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


SMALL_GRID = """\
name: small
dataset: {{name: digits, image_size: 8, train_limit: 256}}
model: {{arch: cifar, block: basic, shortcut: A}}
train: {{epochs: {epochs}, batch_size: 64}}
search:
  algorithm: grid
  space:
    model.depth: [8, 14]
    model.residual: [true, false]
resources: {{cpu: 1}}
"""


def table_rows(stdout: str) -> list[str]:
    """The trial lines of the final table."""
    lines = stdout.split("\n-----")[-1].splitlines()
    return [line for line in lines if re.match(r"^(resnet|plain)\d+", line)]


def child_runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("resnet_sweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return parents, children


VALID = """\
name: t
dataset: {name: digits, image_size: 16}
model: {arch: cifar, block: basic, shortcut: A}
train: {epochs: 2, batch_size: 64}
search:
  algorithm: grid
  space:
    model.depth: [8, 14]
"""


CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, VAL_PER_CLASS = 3, 12, 3, 2


def write_folder(root: Path, *, classes: int = CLASSES, seed: int = 0) -> Path:
    """An ImageFolder of real JPEG files, 40–80 px a side: each class a colour plus noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(classes, 3, 1, 1, generator=g)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", TEST_PER_CLASS)):
        for k in range(classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                h, w = torch.randint(40, 81, (2,), generator=g).tolist()
                pixels = 0.6 * colours[k] + 0.4 * torch.rand(3, h, w, generator=g)
                (folder / f"{i}.JPEG").write_bytes(encode_jpeg((pixels * 255).to(torch.uint8)).numpy().tobytes())
    return root


def recipe(root: Path, *, workers: int = 0, **data) -> RunConfig:
    """The paper's ImageNet recipe at toy sizes: crop 32 of the shorter side at random in
    [36, 48], flip, PCA lighting, per-pixel mean; SGD momentum 0.9, wd 1e-4, lr ÷10 halfway."""
    return RunConfig(
        model=ModelConfig(arch="imagenet", depth=18),
        dataset=DataConfig(
            name="imagefolder",
            root=str(root),
            image_size=32,
            scale_range=(36, 48),
            val_per_class=VAL_PER_CLASS,
            workers=workers,
            **data,
        ),
        train=TrainConfig(batch_size=8, epochs=2, lr=0.02, milestones=(0.5,), device="cpu"),
    )


def tune_records(experiment: Path) -> dict[str, dict]:
    """Tune's record of each trial (its result.json): trial id → every epoch's metrics and the
    last report. Epochs trained before a restore arrive with the first report after it."""
    out = {}
    for result_file in experiment.glob("*/result.json"):
        records = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if not records:
            continue
        epochs: dict[int, dict] = {}
        for record in records:
            for earlier in json.loads(record.get("earlier_epochs") or "[]"):
                epochs.setdefault(int(earlier[M.EPOCH]), earlier)
            if record.get("status") != "diverged":
                epochs.setdefault(int(record[M.EPOCH]), record)
        out[records[-1]["trial_id"]] = {"epochs": epochs, "last": records[-1]}
    return out


def assert_mlflow_equals_tune(client: MlflowClient, experiment: str, folder: Path, planned_epochs: int) -> int:
    """Every trial, every epoch, every metric and the status tags; returns the points compared."""
    parents, children = child_runs(client, experiment)
    records = tune_records(folder)
    assert len(parents) == 1
    by_trial = {c.data.tags["resnet_sweep.trial_id"]: c for c in children}
    assert len(children) == len(by_trial) == len(records) and set(by_trial) == set(
        records
    )  # none missing, no duplicate
    points = 0
    for trial_id, record in records.items():
        run = by_trial[trial_id]
        for key in M.METRICS:
            expected = sorted((epoch, float(r[key])) for epoch, r in record["epochs"].items() if key in r)
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert logged == expected, (run.info.run_name, key)
            points += len(logged)
        status = final_status(record["last"], errored=False, planned_epochs=planned_epochs)
        assert run.data.tags["status"] == str(status) and run.info.status == "FINISHED"
        best = min(record["epochs"].items(), key=lambda kv: (kv[1][M.VAL_ERROR], kv[0]))[0]
        assert run.data.tags["best_epoch"] == str(best)
        assert {k: v for k, v in run.data.params.items() if k in record["last"]["config"]} == {
            k: str(v) for k, v in record["last"]["config"].items()
        }
    assert parents[0].data.tags["status"] == "completed" and parents[0].info.status == "FINISHED"
    return points


K8S = REPO / "k8s"


BIN = Path(sys.executable).parent


KUBECTL = str(BIN / "kubectl") if (BIN / "kubectl").exists() else "kubectl"


def kustomize(folder: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(_kustomize(folder)) if doc]


@functools.cache
def _kustomize(folder: Path) -> str:
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


class MlflowFromManifest:
    """`mlflow server` run with the args and environment of k8s/base/mlflow.yaml's Deployment;
    the Postgres URIs become SQLite files, the artifacts volume a folder, the Secrets test values."""

    USER, PASSWORD = "admin", "a-test-password-only"

    def __init__(self, folder: Path) -> None:
        objects = kustomize(K8S / "overlays" / "shared-volume")
        deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
        ini = next(o for o in objects if o["metadata"]["name"] == "mlflow-auth-config")["data"]["basic_auth.ini"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "postgresql://postgres:5432/mlflow_auth" in ini
        (folder / "basic_auth.ini").write_text(
            ini.replace("postgresql://postgres:5432/mlflow_auth", f"sqlite:///{folder / 'auth.db'}")
        )
        self.port = free_port()
        swaps = {
            "--port=5000": f"--port={self.port}",
            "--host=0.0.0.0": "--host=127.0.0.1",
            "--backend-store-uri=postgresql://postgres:5432/mlflow": f"--backend-store-uri=sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination=/mlartifacts": f"--artifacts-destination={folder / 'artifacts'}",
        }
        args = [swaps.get(a, a) for a in container["args"]]
        assert len(set(args) - set(container["args"])) == len(swaps)  # every swapped flag was in the manifest
        secrets = {"admin-username": self.USER, "admin-password": self.PASSWORD, "flask-secret-key": "test-key"}
        env = {
            e["name"]: e.get("value") or secrets.get(e["valueFrom"]["secretKeyRef"]["key"], "unused")
            for e in container["env"]
        }
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(folder / "basic_auth.ini")
        env["HOME"] = str(folder)
        if not (folder / "mlflow.db").exists():
            migrated_store(folder)
        self.proc = subprocess.Popen(
            [str(BIN / container["command"][0]), *container["command"][1:], *args],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.uri = f"http://127.0.0.1:{self.port}"
        wait_for_server(self.proc, "mlflow server", lambda: urllib.request.urlopen(self.uri + "/health", timeout=2))

    def get(self, path: str, host: str, login: bool = False) -> tuple[int, str]:
        import base64

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Host": host}
        if login:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)
