"""Sweeps whose results live in S3 (a real S3-compatible server on 127.0.0.1): the driver
killed midway and `resume s3://…` finishing it, names never reused, credentials never written."""

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.ray_nodes import free_port
from tests.support import (
    S3_KEY_ID,
    S3_SECRET,
    SMALL_GRID,
    child_runs,
    cli,
    kill_when_midway,
    migrated_store,
    table_rows,
)


def _bucket_texts(s3) -> dict[str, bytes]:
    found = {}
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = s3.client.get_object(Bucket=s3.bucket, Key=obj["Key"])["Body"].read()
    return found


def _files_containing(folder: Path, needle: bytes) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                hits.append(str(path))
        except OSError:
            pass
    return hits


def test_a_sweep_in_s3_keeps_its_results_and_checkpoints_there_and_no_credential_anywhere(tmp_path, s3_server):
    """The short end-to-end check of remote storage (the kill-and-resume one below is slow)."""
    (tmp_path / "small.yaml").write_text(
        SMALL_GRID.format(epochs=1).replace("[8, 14]", "[8]") + "storage_path: s3://sweeps/ray\n"
    )
    migrated_store(tmp_path)
    out = cli("run", "small.yaml", "--no-report", cwd=tmp_path, env=s3_server.env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "results in s3://sweeps/ray/small" in out.stdout and len(table_rows(out.stdout)) == 2, out.stdout
    assert not (tmp_path / "ray_results").exists()
    objects = _bucket_texts(s3_server)
    assert {"ray/small/sweep.yaml", "ray/small/tracking.json"} <= set(objects), sorted(objects)
    assert sum(key.startswith("ray/small/") and key.endswith("state.pt") for key in objects) == 2
    parents, children = child_runs(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "small")
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].data.tags["resnet_sweep.storage"] == "s3://sweeps/ray/small"
    for secret in (S3_SECRET, S3_KEY_ID):
        assert secret not in out.stdout + out.stderr
        assert not [k for k, body in objects.items() if secret.encode() in body]
        assert not _files_containing(tmp_path, secret.encode())


@pytest.mark.slow  # the short S3 sweep below stays in the default suite
def test_s3_sweep_killed_midway_resumes_without_duplicates_or_leaked_credentials(tmp_path, s3_server, ray_tmpdir):
    epochs = 8
    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=epochs) + "storage_path: s3://sweeps/ray\n")
    env = {**s3_server.env, "RAY_TMPDIR": str(ray_tmpdir)}  # this test's Ray logs, searched below
    first, done = kill_when_midway("run", "small.yaml", cwd=tmp_path, epochs=epochs, env=env)
    assert "results in s3://sweeps/ray/small" in first, first
    assert not (tmp_path / "ray_results").exists()  # nothing of the sweep on local disk
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, before = child_runs(client, "small")
    finished = {r.info.run_id: r for r in before if r.data.tags.get("status") == "completed"}
    assert finished and len(finished) < 4, first

    out = cli("resume", "s3://sweeps/ray/small", cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(table_rows(out.stdout)) == 4
    # No finished trial trains again (one whose end the driver did not record before it died is
    # restored from its final checkpoint and only reports that it is complete).
    trained = {m.group(1) for m in re.finditer(r"^\[\d\d:\d\d\] epoch +\d+/\d+ +(\S+)", out.stdout, re.M)}
    assert trained and not trained & done, (trained, done, out.stdout)
    parents, after = child_runs(client, "small")
    assert len(parents) == 1 and len(after) == 4  # zero duplicate runs
    for run in after:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_error")]
        assert steps == list(range(1, epochs + 1)), (run.info.run_name, steps)
        assert run.data.tags["status"] == "completed"
        if run.info.run_id in finished:
            assert run.info.end_time == finished[run.info.run_id].info.end_time
    assert parents[0].data.tags["resnet_sweep.storage"] == "s3://sweeps/ray/small"

    # The same sweep again gets a new name: the one in the bucket is never written into.
    again = cli("run", "small.yaml", "--smoke-test", cwd=tmp_path, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "results in s3://sweeps/ray/small-2" in again.stdout

    # The credentials are in no output, log, tag, artifact or saved file.
    objects = _bucket_texts(s3_server)
    assert any(key.startswith("ray/small/") and key.endswith("state.pt") for key in objects)
    for secret in (S3_SECRET, S3_KEY_ID):
        assert secret not in first + out.stdout + out.stderr + again.stdout + again.stderr
        assert not [k for k, body in objects.items() if secret.encode() in body]
        assert not _files_containing(tmp_path, secret.encode())  # mlflow.db, mlartifacts
        assert not _files_containing(ray_tmpdir, secret.encode())  # Ray's session logs
    for run in after:
        assert not [v for v in {**run.data.tags, **run.data.params}.values() if S3_SECRET in v]


@pytest.mark.slow  # tests/test_bad_inputs.py checks storage paths in-process
def test_unusable_storage_fails_fast_naming_storage_path(tmp_path, s3_server):
    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=1))
    dead = {**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    out = cli("run", "small.yaml", "--storage-path", "s3://sweeps/ray", cwd=tmp_path, env=dead, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: storage_path: cannot use s3://sweeps/ray") and out.stderr.count("\n") == 1
    out = cli(
        "run",
        "small.yaml",
        "--storage-path",
        f"s3://{S3_KEY_ID}:{S3_SECRET}@sweeps/ray",
        cwd=tmp_path,
        env=s3_server.env,
    )
    assert out.returncode == 2 and "credentials" in out.stderr and S3_SECRET not in out.stderr, out.stderr
    assert not (tmp_path / "mlflow.db").exists()
