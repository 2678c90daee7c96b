"""Nothing lost: MLflow equals Tune's own records point for point after an MLflow outage,
after `resnet-sweep sync` rebuilds a lost store, and a login in the tracking URI works against a
real basic-auth server without ever being shown or stored."""

import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow import MlflowClient

from resnet_core import metrics as M
from tests.support import (
    SMALL_GRID,
    MlflowServer,
    assert_mlflow_equals_tune,
    cli,
    descendants,
    environments_holding,
    runs_holding,
    start,
)


def snapshot(client: MlflowClient, experiment: str) -> list:
    """Everything MLflow holds for the experiment, with timestamps: what `sync` must not change."""
    exp = client.get_experiment_by_name(experiment)
    out = []
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        histories = {
            k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, k)]
            for k in run.data.metrics
        }
        artifacts = [(a.path, a.file_size) for a in client.list_artifacts(run.info.run_id)]
        out.append(
            (
                run.info.run_id,
                run.info.run_name,
                run.info.status,
                run.info.end_time,
                sorted(run.data.tags.items()),
                sorted(run.data.params.items()),
                sorted(histories.items()),
                sorted(artifacts),
            )
        )
    return sorted(out)


@pytest.mark.slow  # the login test below runs `sync` end to end in the default suite
def test_sync_rebuilds_a_lost_store_point_for_point_and_twice_changes_nothing(workdir):
    epochs = 3
    (workdir / "small.yaml").write_text(SMALL_GRID.format(epochs=epochs))
    out = cli("run", "small.yaml", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = workdir / "ray_results" / "small"
    live = assert_mlflow_equals_tune(MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"), "small", folder, epochs)

    (workdir / "mlflow.db").rename(workdir / "lost.db")  # the store is lost; Tune's records are not
    out = cli("sync", "small", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert assert_mlflow_equals_tune(client, "small", folder, epochs) == live
    assert f"sent {live} metric points, created 4 runs" in out.stdout
    before = snapshot(client, "small")
    out = cli("sync", str(folder), cwd=workdir)
    assert out.returncode == 0 and "sent 0 metric points, created 0 runs" in out.stdout, out.stdout + out.stderr
    assert snapshot(client, "small") == before


def test_sync_of_a_missing_sweep_is_one_line(workdir):
    out = cli("sync", "nothing-here", cwd=workdir)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "nothing-here" in out.stderr
    assert list(workdir.iterdir()) == []


@pytest.mark.slow
def test_mlflow_server_killed_midway_and_back_a_minute_later_loses_nothing(tmp_path):
    """A real `mlflow server` is SIGKILLed while the sweep trains and started again 60 s later
    on the same port and store: training goes on, the held-back results are sent when it is
    back, and MLflow then equals Tune's records point for point (no point lost or doubled)."""
    epochs = 30
    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=epochs))
    server = MlflowServer(tmp_path / "server").start()
    proc = start("run", "small.yaml", "--tracking-uri", server.uri, cwd=tmp_path)
    lines, killed_at, restarted, during = [], None, False, 0
    try:
        for line in proc.stdout:
            lines.append(line)
            if killed_at is None and re.match(r"^\[\d\d:\d\d\] epoch +2/", line):
                server.stop(signal.SIGKILL)
                killed_at = time.monotonic()
            elif killed_at is not None and not restarted:
                during += bool(re.match(r"^\[\d\d:\d\d\] epoch", line))
                if time.monotonic() - killed_at >= 60:
                    server.start()
                    restarted, down_s = True, time.monotonic() - killed_at
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines)
    try:
        assert proc.returncode == 0, text[-4000:]
        assert restarted and during >= 10, text[-4000:]  # trials trained on while MLflow was down
        assert "warning: MLflow write failed" in text and "MLflow answers again" in text, text[-4000:]
        points = assert_mlflow_equals_tune(
            MlflowClient(server.uri), "small", tmp_path / "ray_results" / "small", epochs
        )
        assert points == 4 * epochs * len(M.METRICS)
        print(
            f"\noutage: MLflow down {down_s:.0f} s from epoch 2; {during} epochs "
            f"trained meanwhile; {points} metric points = Tune's records, 0 lost, 0 doubled, 4 runs"
        )
    finally:
        server.stop()


def test_login_in_the_tracking_uri_works_with_basic_auth_and_is_never_shown_or_stored(
    tmp_path, ray_tmpdir, manifest_mlflow
):
    """`--tracking-uri http://admin:SECRET@host` against a real `mlflow server --app-name
    basic-auth`: the sweep logs there, and SECRET is in no output, no file of the sweep's folder,
    Ray's logs, or MLflow's params and tags. Without the login, or with a wrong one: one line."""
    server = manifest_mlflow
    secret = server.PASSWORD
    # One trial: every request to a basic-auth server pays a password hash.
    (tmp_path / "small.yaml").write_text(
        SMALL_GRID.format(epochs=1).replace("[8, 14]", "[8]").replace("[true, false]", "[true]")
    )
    env = {"RAY_TMPDIR": str(ray_tmpdir)}
    login = f"http://{server.USER}:{secret}@127.0.0.1:{server.port}"
    refusals = [
        (server.uri, "requires a login (401)"),
        (login.replace(secret, "wrong-password"), "refused the login given (401)"),
    ]
    with ThreadPoolExecutor(len(refusals)) as pool:  # both at once: neither starts anything
        refused = pool.map(
            lambda uri: cli("run", "small.yaml", "--tracking-uri", uri, cwd=tmp_path, env=env), [u for u, _ in refusals]
        )
        for (_, says), out in zip(refusals, refused, strict=True):
            assert out.returncode == 2 and out.stderr.count("\n") == 1 and says in out.stderr, out.stderr
            assert "wrong-password" not in out.stderr
    # Mid-run, every process the driver started (Ray's GCS, raylet, the trials' workers) is
    # searched: trials report to the driver and never need the login.
    outputs = []
    proc = start("run", "small.yaml", "--tracking-uri", login, cwd=tmp_path, env=env)
    seen, searched, in_environments = [], 0, []
    for line in proc.stdout:
        seen.append(line)
        if not searched and re.match(r"^\[\d\d:\d\d\] epoch", line):
            searched = len(descendants(proc.pid))
            in_environments = environments_holding(secret, proc.pid)
    proc.wait(timeout=60)
    outputs.append("".join(seen))
    assert proc.returncode == 0, outputs[-1][-3000:]
    assert f"MLflow http://127.0.0.1:{server.port}" in outputs[-1]
    assert searched >= 3 and in_environments == [], (searched, in_environments)
    # resume needs the login again (it is stored nowhere); sync takes it the same way
    out = cli("resume", "small", cwd=tmp_path, env=env)
    outputs.append(out.stdout + out.stderr)
    assert out.returncode == 2 and "requires a login" in out.stderr, out.stderr
    out = cli("sync", "small", "--tracking-uri", login, cwd=tmp_path, env=env)
    outputs.append(out.stdout + out.stderr)
    assert out.returncode == 0 and "created 0 runs" in out.stdout, out.stdout + out.stderr

    leaks = [f"output {i}" for i, text in enumerate(outputs) if secret in text]
    files = [p for root in (tmp_path / "ray_results", ray_tmpdir) for p in root.rglob("*") if p.is_file()]
    leaks += [str(p) for p in files if secret.encode() in p.read_bytes()]
    parents, children, in_runs = runs_holding(server.uri, server.USER, secret, "small")
    assert len(parents) == 1 and len(children) == 1 and leaks + in_runs == []
    print(
        f"\nsecret searched in {len(outputs)} outputs, {len(files)} files, {len(parents + children)} runs, "
        f"the environments of {searched} processes of the sweep: not found"
    )


@pytest.mark.slow
def test_writes_queued_for_a_down_server_survive_a_killed_driver_and_resume_sends_them(tmp_path):
    """MLflow dies, a trial finishes meanwhile (its epochs and end wait in the driver's memory,
    Tune records it TERMINATED), the driver is SIGKILLed, MLflow comes back: `resume` alone, with
    no `sync`, leaves MLflow equal to Tune's records point for point, every run in its true status."""
    epochs = 6
    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=epochs))
    server = MlflowServer(tmp_path / "server").start()
    proc = start("run", "small.yaml", "--tracking-uri", server.uri, cwd=tmp_path)
    folder = tmp_path / "ray_results" / "small"
    lines, done = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if server.proc.poll() is None and re.match(r"^\[\d\d:\d\d\] epoch +1/", line):
                server.stop(signal.SIGKILL)
            elif server.proc.poll() is not None and (m := re.match(r"^\[\d\d:\d\d\] completed +(\S+)", line)):
                done = m.group(1)
                break
        # Tune's saved state records the trial TERMINATED before the kill (its ends are in memory only)
        deadline = time.monotonic() + 120
        while not any("TERMINATED" in p.read_text() for p in folder.glob("experiment_state-*.json")):
            assert time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines)
    assert done and "warning: MLflow write failed" in text, text[-3000:]
    server.start()
    try:
        out = cli("resume", "small", cwd=tmp_path, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "MLflow had not received everything before the last driver stopped: sent " in out.stdout, out.stdout
        assert "sync" not in out.stdout + out.stderr
        points = assert_mlflow_equals_tune(MlflowClient(server.uri), "small", folder, epochs)
        assert points == 4 * epochs * len(M.METRICS)
        print(f"\nkilled with {done} finished while MLflow was down; after resume: {points} points = Tune's records")
    finally:
        server.stop()
