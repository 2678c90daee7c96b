"""Beyond one machine: sweeps on a real multi-node Ray cluster (separate `ray start`
processes on 127.0.0.1, token auth on as Ray 2.60 does by default), node loss, nodes that join,
and the clear one-line failures (no token, dead cluster, storage a node cannot see)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.running.cluster import _init, _one_line
from tests.ray_nodes import LocalCluster, free_port, token_home
from tests.support import SMALL_GRID, child_runs, cli, migrated_store, table_rows


def sweep_file(folder: Path, epochs: int = 3, size: int = 8, limit: int = 256) -> Path:
    path = folder / "small.yaml"
    path.write_text(
        SMALL_GRID.format(epochs=epochs).replace(
            "image_size: 8, train_limit: 256", f"image_size: {size}, train_limit: {limit}"
        )
    )
    return path


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(token_home(tmp_path))
    try:
        yield c
    finally:
        c.shutdown()


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_two_node_sweep_with_token_auth_runs_on_both_nodes(tmp_path, cluster):
    head = cluster.start_head()
    worker = cluster.add_worker()
    user = {"HOME": str(cluster.env["HOME"])}  # the token is in ~/.ray; RAY_AUTH_MODE is not set
    sweep_file(tmp_path)
    migrated_store(tmp_path)

    out = cli("run", "small.yaml", "--address", cluster.address, cwd=tmp_path, env=user)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = table_rows(out.stdout)
    assert len(rows) == 4 and all(" completed " in r for r in rows), out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, children = child_runs(client, "small")
    assert len(parents) == 1 and len(children) == 4
    nodes = {c.data.tags["node_id"] for c in children}
    assert nodes == {head.node_id, worker.node_id}  # both nodes trained trials
    for child in children:
        assert child.data.tags["status"] == "completed" and child.data.tags["host"]
        # How it trained, as resolved on its node: CPU defaults are exact fp32 with fused SGD.
        assert (child.data.tags["device"], child.data.tags["speed"]) == ("cpu", "fp32 fused-sgd")
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_error")]
        assert steps == [1, 2, 3]
        assert f"(node {child.data.tags['node_id'][:8]})" in out.stdout  # progress lines say where


@pytest.mark.slow  # the default suite keeps the two-node sweep above
def test_unusable_storage_no_token_and_a_gone_cluster_are_one_line_each_in_seconds(tmp_path, cluster, s3_server):
    cluster.start_head()
    # The worker node cannot reach the S3 endpoint (its environment points elsewhere).
    worker = cluster.add_worker(env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    user = {"HOME": str(cluster.env["HOME"])}
    sweep_file(tmp_path)

    # Storage that one node cannot use: one line naming storage_path, before any trial.
    env = {**user, **s3_server.env}
    out = cli(
        "run", "small.yaml", "--address", cluster.address, "--storage-path", "s3://sweeps/ray", cwd=tmp_path, env=env
    )
    assert out.returncode == 2, out.stdout + out.stderr
    line = one_line(out.stderr)
    assert (
        line.startswith("error: storage_path: s3://sweeps/ray is not usable from every node")
        and worker.node_id[:8] in line
    ), line
    assert "epoch" not in out.stdout and s3_server.env["AWS_SECRET_ACCESS_KEY"] not in out.stdout + out.stderr

    # No token here: one line that says so, in seconds (Ray alone retries for a minute).
    start = time.time()
    out = cli("run", "small.yaml", "--address", cluster.address, cwd=tmp_path, env={"HOME": str(tmp_path / "nobody")})
    assert out.returncode == 1 and "requires an auth token" in one_line(out.stderr), out.stderr
    assert time.time() - start < 30

    # The cluster is gone: one line, in seconds.
    cluster.shutdown()
    start = time.time()
    out = cli("run", "small.yaml", "--address", cluster.address, cwd=tmp_path, env=user)
    assert out.returncode == 1 and "no Ray cluster answers at" in one_line(out.stderr), out.stderr
    assert time.time() - start < 30


@pytest.mark.slow  # the default suite keeps the two-node sweep
def test_local_means_local_even_when_a_dead_cluster_is_recorded(tmp_path, ray_tmpdir):
    """`ray start` records its cluster for bare `ray.init()`; once that cluster has died, a sweep
    without --address must still start its own Ray, and `--address auto` must say it is dead."""
    dead = f"127.0.0.1:{free_port()}"
    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(dead)
    env = {"RAY_TMPDIR": str(ray_tmpdir)}
    sweep_file(tmp_path, epochs=1)
    out = cli("run", "small.yaml", cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "at a time on this machine" in out.stdout and len(table_rows(out.stdout)) == 4

    start = time.time()
    out = cli("run", "small.yaml", "--address", "auto", cwd=tmp_path, env=env)
    assert out.returncode == 1 and f"no Ray cluster answers at {dead}" in one_line(out.stderr), out.stderr
    assert time.time() - start < 30


@pytest.mark.slow  # Ray Client's per-job server can be slow to start on a loaded 2-core machine
def test_ray_client_address_runs_tunes_loop_on_the_head(tmp_path, cluster, mlflow_server):
    head, worker = cluster.start_head(), cluster.add_worker()
    user = {"HOME": str(cluster.env["HOME"])}
    sweep_file(tmp_path)
    # Ray Client (ray://): Tune's loop runs on the head, so MLflow must be a server it reaches.
    out = cli("run", "small.yaml", "--address", cluster.client_address, cwd=tmp_path, env=user)
    assert out.returncode == 2 and "tracking.tracking_uri" in one_line(out.stderr), out.stderr
    out = cli(
        "run",
        "small.yaml",
        "--address",
        cluster.client_address,
        "--tracking-uri",
        mlflow_server,
        cwd=tmp_path,
        env=user,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(table_rows(out.stdout)) == 4 and "results in" in out.stdout
    parents, children = child_runs(MlflowClient(mlflow_server), "small")
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["node_id"] for c in children} <= {head.node_id, worker.node_id}


@pytest.mark.slow
def test_a_node_that_joins_gets_trials_and_a_node_that_dies_costs_at_most_an_epoch(tmp_path, cluster):
    # The test's fault hook (tests/faults) holds every trial after epoch 1 until the new node has
    # a trial, then after epoch 3 until that node is gone: states, not the clock, on a loaded machine.
    epochs = 30
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "hold").write_text("1")
    cluster.env.update(PYTHONPATH=str(Path(__file__).parent / "faults"), RESNET_SWEEP_TEST_FAULTS=str(faults))
    head = cluster.start_head(cpus=1)
    sweep_file(tmp_path, epochs=epochs, size=16, limit=1024)
    exe = Path(sys.executable).parent / "resnet-sweep"
    proc = subprocess.Popen(
        [str(exe), "run", "small.yaml", "--address", cluster.address],
        cwd=tmp_path,
        env={**os.environ, "HOME": str(cluster.env["HOME"])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read_until(pattern: str) -> re.Match:
        for line in proc.stdout:
            lines.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError("".join(lines))

    read_until(r"^\[\d\d:\d\d\] epoch +1/")  # the sweep is under way on the head alone
    worker = cluster.add_worker(cpus=1)
    short = worker.node_id[:8]
    moved = read_until(rf"running +(\S+) on .*\(node {short}\)").group(1)  # the new node got a trial
    (faults / "hold").write_text("3")
    read_until(rf"epoch +3/{epochs} +{re.escape(moved)} ")  # midway on it, held there
    worker.kill()
    (faults / "hold").unlink()
    for line in proc.stdout:
        lines.append(line)
    proc.wait(timeout=600)
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]
    rows = table_rows(out)
    assert len(rows) == 4 and all(" completed " in r for r in rows), out
    assert re.search(rf"retrying +{re.escape(moved)} \(was on .*\(node {short}\)", out), out
    for name in {r.split()[0] for r in rows}:  # every epoch reported exactly once
        reported = [int(m.group(1)) for m in re.finditer(rf"epoch +(\d+)/{epochs} +{re.escape(name)} ", out)]
        assert reported == list(range(1, epochs + 1)), (name, reported)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, children = child_runs(client, "small")
    assert len(parents) == 1 and len(children) == 4
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_error")]
        assert steps == list(range(1, epochs + 1)), (child.info.run_name, steps)
        assert child.data.tags["status"] == "completed"
    by_name = {c.info.run_name: c for c in children}
    assert by_name[moved].data.tags["nodes"].split(",") == [worker.node_id, head.node_id]
    assert by_name[moved].data.tags["node_id"] == head.node_id


@pytest.mark.slow  # Ray Client's per-job server can be slow to start on a loaded 2-core machine
def test_ray_client_keeps_the_mlflow_login_out_of_rays_records_logs_and_trials(tmp_path, cluster):
    """With ray://, Tune's loop on the head logs to a basic-auth MLflow server with the login
    given on this machine, and the login is in no output, no file of the sweep or of Ray's
    session (logs included), none of Ray's records of the job (runtime_env, actors, tasks), and
    the environment of no process of the cluster (its trials included)."""
    import re

    from tests.support import MlflowFromManifest, descendants, environments_holding, runs_holding, start

    cluster.start_head(cpus=2)
    user = {"HOME": str(cluster.env["HOME"])}
    sweep_file(tmp_path, epochs=2)
    (tmp_path / "mlflow").mkdir()
    server = MlflowFromManifest(tmp_path / "mlflow")
    secret = server.PASSWORD
    login = f"http://{server.USER}:{secret}@127.0.0.1:{server.port}"
    try:
        proc = start(
            "run", "small.yaml", "--address", cluster.client_address, "--tracking-uri", login, cwd=tmp_path, env=user
        )
        seen, searched, in_environments = [], 0, []
        roots = [proc.pid, *(node.proc.pid for node in cluster.nodes)]
        for line in proc.stdout:
            seen.append(line)
            if not searched and re.search(r"\[\d\d:\d\d\] epoch", line):  # a log line of the head's
                searched = len(descendants(*roots))
                in_environments = environments_holding(secret, *roots)
        proc.wait(timeout=60)
        output = "".join(seen)
        assert proc.returncode == 0, output[-3000:]
        assert len(table_rows(output)) == 4 and searched >= 5 and in_environments == [], (searched, in_environments)
        # GCS's job and actor tables and task events, raw, where a runtime_env is kept (Ray's
        # state API needs a dashboard; a test may read the tables underneath)
        code = (
            "import sys, ray; from ray._private import state; "
            f"ray.init(address={cluster.address!r}, logging_level='ERROR', log_to_driver=False); "
            "a = state.state._connect_and_get_accessor(); "
            "sys.stdout.buffer.write(b''.join([*a.get_job_table(skip_submission_job_info_field=False, "
            "skip_is_running_tasks_field=True), *a.get_actor_table(None, None), *a.get_task_events()]))"
        )
        records = subprocess.run(
            [sys.executable, "-c", code],
            env={**cluster.env, "RAY_AUTH_MODE": "token"},
            capture_output=True,
            timeout=120,
        )
        assert records.returncode == 0 and b"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" in records.stdout, records.stderr[
            -2000:
        ]
        files = [p for root in (tmp_path / "ray_results", cluster.logs) for p in root.rglob("*") if p.is_file()]
        leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
        leaks += ["output"] * (secret in output) + ["Ray's records of the job"] * (secret.encode() in records.stdout)
        parents, children, in_runs = runs_holding(server.uri, server.USER, secret, "small")
        assert len(parents) == 1 and len(children) == 4
        assert leaks + in_runs == [] and len(files) > 20
        print(
            f"\nray://: secret searched in the output, {len(files)} files, Ray's records "
            f"({len(records.stdout)} bytes), the environments of {searched} processes, 5 runs: not found"
        )
    finally:
        server.stop()


@pytest.mark.unit
def test_a_ray_client_failure_with_the_heads_traceback_is_one_line():
    """As Ray Client gave it when the head could not start the client's server (a loaded head)."""
    said = (
        "Initialization failure from server:\nTraceback (most recent call last):\n"
        '  File ".../ray/util/client/server/proxier.py", line 772, in Datapath\n    raise RuntimeError(\n'
        "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err for detailed logs.\n\n"
    )
    assert _one_line(ConnectionError(said)) == (
        "Initialization failure from server: RuntimeError: Starting Ray client server failed. "
        "See ray_client_server_23000.err for detailed logs."
    )
    assert _one_line(ConnectionError("Failed to connect\nto the GCS")) == "Failed to connect to the GCS"


@pytest.mark.unit
def test_a_ray_client_server_that_failed_to_start_is_asked_for_again(monkeypatch, capsys):
    """The head's failure to start a connection's server is worth a new connection (with a note);
    any other failure is not retried."""
    monkeypatch.setattr(time, "sleep", lambda s: None)
    failed = "Initialization failure from server:\nRuntimeError: Starting Ray client server failed. See x.err"
    calls = []

    class Ray:
        def __init__(self, errors):
            self.errors = errors

        def init(self, address, **options):
            calls.append(address)
            if self.errors:
                raise self.errors.pop(0)

    _init(Ray([ConnectionAbortedError(failed)]), "ray://head:10001", {})
    assert calls == ["ray://head:10001"] * 2
    assert capsys.readouterr().err == (
        "note: the head could not start this connection's Ray Client server; connecting again (2 of 3)\n"
    )
    with pytest.raises(ConnectionAbortedError):
        _init(Ray([ConnectionAbortedError(failed)] * 3), "ray://head:10001", {})
    with pytest.raises(ConnectionError):
        _init(Ray([ConnectionError("no cluster answers"), None]), "ray://head:10001", {})
    assert len(calls) == 2 + 3 + 1
