"""Secrets in a tracking URI (a password, a query's token or password) never reach output, a
saved file or MLflow, in whichever form they are written (percent-encoded or not). No servers."""

from __future__ import annotations

import pytest

from orchestrator.tracking import mlflow_store
from orchestrator.tracking.mlflow_store import (
    TrackingUnavailableError,
    check_tracking_uri,
    redact,
    secret_in,
    use_tracking_uri,
)
from tests.support import cli


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(mlflow_store, "_database_uris", {})
    monkeypatch.setattr(mlflow_store, "_hidden_query", {})
    for name in mlflow_store.LOGIN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.unit
def test_a_database_password_in_the_query_is_kept_in_memory_and_redacted_in_both_forms():
    uri = "postgresql://alice@db:5432/mlflow?sslmode=require&password=p%40ss%2Bw0rd&application_name=sweeps"
    assert secret_in(uri) == "a secret in its query (password=…)"
    shown = use_tracking_uri(uri)
    assert shown == "postgresql://alice@db:5432/mlflow?sslmode=require&application_name=sweeps"
    assert mlflow_store._database_uris[shown] == uri  # what MLflow's client is given
    said = redact(f"could not connect ({uri}); password 'p@ss+w0rd' refused, p%40ss%2Bw0rd")
    assert "p@ss" not in said and "p%40ss" not in said and said.count("***") == 3, said


@pytest.mark.unit
def test_a_database_password_in_the_userinfo_is_redacted_decoded_and_encoded():
    shown = use_tracking_uri("mysql://bob:s%3Ac%2Fret@db/mlflow")
    assert shown == "mysql://bob@db/mlflow" and secret_in("mysql://bob:x@db/mlflow") == "a password"
    said = redact("FATAL: password s:c/ret for bob; in URI s%3Ac%2Fret")
    assert "s:c/ret" not in said and "s%3Ac%2Fret" not in said, said


@pytest.mark.unit
def test_an_http_query_is_refused_without_showing_its_token():
    shown = use_tracking_uri("https://mlflow.example.org/?token=tok-123456")
    assert shown == "https://mlflow.example.org/"
    with pytest.raises(TrackingUnavailableError) as err:
        check_tracking_uri(shown)
    assert "MLFLOW_TRACKING_TOKEN" in str(err.value) and "tok-123456" not in str(err.value)
    assert redact("GET /?token=tok-123456") == "GET /?token=***"


@pytest.mark.unit
@pytest.mark.parametrize("mark", ["/", "?", "#"])
def test_a_login_with_an_unencoded_slash_query_or_hash_is_refused_without_showing_it(mark):
    # The URL parser would take "S3cr" for the host or path and show the rest: refused, not repeated.
    with pytest.raises(TrackingUnavailableError) as err:
        use_tracking_uri(f"http://alice:S3cr{mark}etPW@127.0.0.1:5000")
    assert "S3cr" not in str(err.value) and "etPW" not in str(err.value) and "percent-encode" in str(err.value)
    assert use_tracking_uri("sqlite:////tmp/at@sign/mlflow.db") == "sqlite:////tmp/at@sign/mlflow.db"  # a path


def test_a_secret_in_the_sweep_files_tracking_uri_is_refused_by_name(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: s\ndataset: {name: synthetic, synthetic_size: 64, image_size: 8, val_size: 16}\nmodel: {depth: 8}\ntrain: {epochs: 1}\n"
        "tracking: {tracking_uri: 'postgresql://alice@db/mlflow?password=hunter2'}\n"
    )
    out = cli("run", "s.yaml", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "tracking.tracking_uri" in out.stderr and "password=…" in out.stderr and "hunter2" not in out.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "s.yaml"]  # nothing started, nothing written


@pytest.mark.unit
def test_ray_starts_without_the_login_in_its_environment_or_the_command_line(monkeypatch):
    """Ray's processes inherit the environment, and Ray records the command line as the job's
    entrypoint: while it starts, neither holds the login."""
    import os
    import sys

    from orchestrator.tracking.login import without_login

    shown = use_tracking_uri("http://alice:pa%24%24word@mlflow:5000")
    argv = ["resnet-sweep", "run", "s.yaml", "--tracking-uri", "http://alice:pa%24%24word@mlflow:5000"]
    monkeypatch.setattr(sys, "argv", argv)
    with without_login():
        assert "MLFLOW_TRACKING_PASSWORD" not in os.environ and "pa%24%24word" not in " ".join(sys.argv)
        assert sys.argv[-1] == "http://alice:***@mlflow:5000"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pa$$word" and sys.argv is argv and shown == "http://mlflow:5000"
