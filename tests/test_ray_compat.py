"""orchestrator/running/ray_compat.py: each Ray internal the sweep uses exists on the installed Ray and
has its effect; a hook that guards a secret or correctness fails loudly (one line naming the
versions) when its target is missing. No Ray instance is started."""

import logging

import pytest

from orchestrator.running import ray_compat
from orchestrator.running.cluster import CREDENTIAL_ENV
from orchestrator.running.progress import TUNE_INTERRUPT, TrialErrorTraces
from orchestrator.running.ray_compat import RayCompatError

pytestmark = pytest.mark.unit


def _one_line_naming_versions(err: pytest.ExceptionInfo, what: str) -> None:
    import ray

    message = str(err.value)
    assert "\n" not in message and what in message and f"ray {ray.__version__}" in message, message
    assert "constraints.txt" in message


def test_tune_no_longer_copies_aws_credentials_into_runtime_envs(monkeypatch):
    """The effect: the runtime_env Tune's actor-class cache builds for a trainable holds the
    keys before the hook and not after (ray.remote is replaced by a recorder: nothing starts)."""
    from ray.tune.execution import class_cache

    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", set(class_cache.ENV_VARS_TO_PROPAGATE))
    for name in CREDENTIAL_ENV:
        monkeypatch.setenv(name, "secret-" + name)
    envs = []

    class Recorder:
        @staticmethod
        def remote(runtime_env):
            envs.append(runtime_env["env_vars"])
            return lambda cls: cls

    monkeypatch.setattr(class_cache, "ray", Recorder)

    class Before:
        pass

    class After:
        pass

    class_cache._ActorClassCache().get(Before)
    ray_compat.stop_copying_env(CREDENTIAL_ENV)
    class_cache._ActorClassCache().get(After)
    assert set(CREDENTIAL_ENV) <= set(envs[0])
    assert not set(CREDENTIAL_ENV) & set(envs[1]), envs[1]


def test_a_missing_credential_hook_is_loud(monkeypatch):
    from ray.tune.execution import class_cache

    monkeypatch.delattr(class_cache, "ENV_VARS_TO_PROPAGATE")
    with pytest.raises(RayCompatError) as err:
        ray_compat.stop_copying_env(CREDENTIAL_ENV)
    _one_line_naming_versions(err, "ENV_VARS_TO_PROPAGATE")


def test_mixins_become_bases_of_the_trainable():
    class Mixin:
        pass

    def trainable(config):
        return None

    ray_compat.add_trainable_mixins(trainable, Mixin)
    from ray.tune.trainable import wrap_function

    assert Mixin in wrap_function(trainable).__mro__


def test_ignored_mixins_are_loud(monkeypatch):
    import ray.tune.trainable as trainable_module

    class Mixin:
        pass

    def trainable(config):
        return None

    real = trainable_module.wrap_function
    monkeypatch.setattr(trainable_module, "wrap_function", lambda f: real(lambda config: None))
    with pytest.raises(RayCompatError) as err:
        ray_compat.add_trainable_mixins(trainable, Mixin)
    _one_line_naming_versions(err, "__mixins__")


def test_tunes_stop_and_error_lines_are_recognised():
    """The effect: a record as Tune logs it on Ctrl-C is seen; a trial error's trace is dropped."""
    ray_compat.check_tune_messages()
    seen = TUNE_INTERRUPT.seen
    try:
        TUNE_INTERRUPT.seen = False
        record = logging.LogRecord(
            ray_compat.STOP_LOGGER,
            logging.WARNING,
            "tune.py",
            1,
            "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run.",
            None,
            None,
        )
        TUNE_INTERRUPT.filter(record)
        assert TUNE_INTERRUPT.seen
    finally:
        TUNE_INTERRUPT.seen = seen
    error = logging.LogRecord(
        ray_compat.ERROR_LOGGER,
        logging.ERROR,
        "tune_controller.py",
        1,
        "Trial task failed for trial x_00000",
        None,
        None,
    )
    assert not TrialErrorTraces().filter(error)


def test_ray_clients_server_failure_is_the_text_its_head_sends():
    """connect() connects again when the head says this (not a security or correctness hook:
    with another text the failure is one line at once, as before)."""
    import inspect

    from ray.util.client.server import proxier

    assert ray_compat.CLIENT_SERVER_FAILED in inspect.getsource(proxier)


def test_changed_tune_messages_are_loud(monkeypatch):
    monkeypatch.setattr(ray_compat, "STOP_PREFIX", "A line Tune never logs")
    with pytest.raises(RayCompatError) as err:
        ray_compat.check_tune_messages()
    _one_line_naming_versions(err, "A line Tune never logs")


def test_refresh_config_rereads_the_auth_mode(monkeypatch):
    """The effect, in a fresh process (the config is process-wide): RAY_AUTH_MODE set after
    Ray's import counts only once the config is re-read."""
    import subprocess
    import sys

    import ray._raylet

    script = (
        "import os, ray._raylet as r; from orchestrator.running import ray_compat; before = r.get_authentication_mode(); "
        "os.environ['RAY_AUTH_MODE'] = 'token'; ray_compat.refresh_config(); "
        "token = r.AuthenticationMode.TOKEN; print(before == token, r.get_authentication_mode() == token)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_AUTH_MODE"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr
    monkeypatch.setattr(ray._raylet, "Config", type("Config", (), {}))
    with pytest.raises(RayCompatError) as err:
        ray_compat.refresh_config()
    _one_line_naming_versions(err, "Config.initialize")


def test_bootstrap_address_is_the_cluster_ray_start_recorded(tmp_path, monkeypatch):
    """`--address auto`: the address `ray start` wrote under Ray's temp folder, or None."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert ray_compat.bootstrap_address() is None
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.7:6379\n")
    assert ray_compat.bootstrap_address() == "10.0.0.7:6379"
    import ray._private.services as services

    monkeypatch.delattr(services, "find_bootstrap_address")
    with pytest.raises(RayCompatError) as err:
        ray_compat.bootstrap_address()
    _one_line_naming_versions(err, "find_bootstrap_address")


def test_gcs_client_is_rays_or_none(monkeypatch):
    """The early auth check's client is Ray's GcsClient (its effect, a wrong token refused in
    one line, is tests/test_cluster.py's); without one in this Ray, None and ray.init reports."""
    import ray._raylet

    assert callable(ray._raylet.GcsClient)
    monkeypatch.delattr(ray._raylet, "GcsClient")
    assert ray_compat.gcs_client("127.0.0.1:1") is None


def test_error_filename_is_read_from_tunes_trial():
    from ray.tune.experiment import Trial

    trial = Trial("f", stub=True)
    assert hasattr(trial.run_metadata, "error_filename")
    trial.run_metadata.error_filename = "error.txt"
    assert ray_compat.error_filename(trial) == "error.txt"
    assert ray_compat.error_filename(object()) is None


def test_the_result_file_is_tunes():
    from ray.tune.result import EXPR_RESULT_FILE

    assert ray_compat.RESULT_FILE == EXPR_RESULT_FILE
