import gc
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.support import S3_KEY_ID, S3_SECRET, MlflowServer, wait_for_server

# Tests keep torch to one thread per process: two cores are shared with Ray workers. This
# process imported torch before the variable was set, so it is told too (two threads on a
# busy two-core machine made in-process training 3-4x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
    wait_for_server(proc, "moto server", lambda: client.create_bucket(Bucket="sweeps"))
    yield SimpleNamespace(env=env, client=client, bucket="sweeps")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` process on 127.0.0.1, over HTTP."""
    server = MlflowServer(tmp_path / "server").start()
    yield server.uri
    server.stop()


@pytest.fixture(scope="session")
def quickstart_sweep(tmp_path_factory):
    """`resnet-sweep run sweeps/quickstart.yaml --smoke-test`, run once in a folder of its own
    (``cwd``; ``ran``: the finished command) for the tests that only read a finished sweep."""
    from tests.support import SWEEPS, cli

    cwd = tmp_path_factory.mktemp("quickstart")
    return SimpleNamespace(cwd=cwd, ran=cli("run", SWEEPS / "quickstart.yaml", "--smoke-test", cwd=cwd, timeout=600))


@pytest.fixture(scope="session")
def manifest_mlflow(tmp_path_factory):
    """`mlflow server` with the flags and environment of k8s/base/mlflow.yaml (basic auth),
    started once for the tests that only ask it for health and logins and the one sweep that
    logs there (experiment `small`)."""
    from tests.support import MlflowFromManifest

    server = MlflowFromManifest(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


def pytest_collection_finish(session):
    """Every test module is imported (torch, Ray, MLflow with them): their objects live as long as
    the session, so Python's full collections need not walk them again (each took 0.3-1 s)."""
    gc.collect()
    gc.freeze()
