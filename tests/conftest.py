import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"

# Tests keep torch to one thread per process: two cores are shared with Ray workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# What a unit test may not start (pytest -m unit: in-process, no servers, no CLI processes).
NOT_IN_UNIT_TESTS = {"resnet-sweep", "mlflow", "ray", "moto_server", "kubectl", "chromium", "chromedriver"}


@pytest.fixture(autouse=True)
def _unit_tests_start_nothing(request, monkeypatch):
    """A test marked unit that starts the CLI, a server or Ray fails, naming what it started."""
    if request.node.get_closest_marker("unit") is None:
        return
    popen = subprocess.Popen.__init__

    def refuse(self, args, *rest, **kwargs):
        words = [str(w) for w in (args if isinstance(args, (list, tuple)) else str(args).split())]
        named = {Path(w).name for w in words[:1]} | {w for w in words[1:3] if w in NOT_IN_UNIT_TESTS}
        if named & NOT_IN_UNIT_TESTS:
            raise AssertionError(f"a unit test started {' '.join(words[:3])}: mark it otherwise")
        popen(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    if "ray" in sys.modules:

        def no_ray(*args, **kwargs):
            raise AssertionError("a unit test started Ray: mark it otherwise")

        monkeypatch.setattr(sys.modules["ray"], "init", no_ray)


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

    from tests.test_sweeps import child_runs

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


@pytest.fixture
def ray_tmpdir():
    """A RAY_TMPDIR of the test's own, removed afterwards; short, as Ray's socket paths live in it."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory (where a user would run the commands)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _wait_for_server(proc: subprocess.Popen, what: str, ready, timeout: float = 120) -> None:
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


@pytest.fixture
def s3_server(tmp_path):
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 with one bucket; yields the
    AWS environment a user would export (``env``: endpoint and credentials) and a boto3 client
    to read the bucket back."""
    import boto3

    from tests.ray_nodes import free_port

    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    _wait_for_server(proc, "moto server", lambda: client.create_bucket(Bucket="sweeps"))
    yield SimpleNamespace(env=env, client=client, bucket="sweeps")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


class MlflowServer:
    """A real `mlflow server` process on 127.0.0.1 over HTTP, its stores in ``folder``; it can be
    killed and started again on the same port (an outage)."""

    def __init__(self, folder: Path) -> None:
        from tests.ray_nodes import free_port

        self.folder, self.port = folder, free_port()
        folder.mkdir(exist_ok=True)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        import urllib.request

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
        )
        _wait_for_server(self.proc, "mlflow server", lambda: urllib.request.urlopen(self.uri + "/health", timeout=2))
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


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` process on 127.0.0.1, over HTTP."""
    server = MlflowServer(tmp_path / "server").start()
    yield server.uri
    server.stop()
