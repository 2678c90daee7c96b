"""Every use of a private or undocumented Ray / Tune API, in one place.

No public API does these; each is checked against the installed Ray by tests/test_ray_compat.py
(that it exists and has its effect). A hook that guards a secret or the sweep's correctness
raises ``RayCompatError`` (one line naming the installed Ray and the supported range) when its
target is missing; a hook that only improves a message falls back to Ray's own behaviour:

- ``stop_copying_env``: Tune copies the driver's AWS credentials into every trial's runtime_env
  (logged in plain text, kept in Ray's GCS) — secret, loud.
- ``add_trainable_mixins``: restoring from the checkpoints storage still holds — correct
  resumes, loud.
- ``check_tune_messages``: Ctrl-C is seen only in Tune's log text — correctness, loud.
- ``refresh_config``: Ray caches RAY_AUTH_MODE at import — without it a token cluster refuses
  us, loud.
- ``bootstrap_address``: `--address auto` — loud (there is no other way to find it).
- ``gcs_client``, ``error_filename``: an early auth message and a fresher error trace — quiet.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from resnet_core.requirements import declared

__all__ = [
    "CLIENT_SERVER_FAILED",
    "ERROR_LOGGER",
    "ERROR_PREFIX",
    "RESULT_FILE",
    "STOP_LOGGER",
    "STOP_PREFIX",
    "RayCompatError",
    "add_trainable_mixins",
    "bootstrap_address",
    "check_tune_messages",
    "error_filename",
    "gcs_client",
    "refresh_config",
    "stop_copying_env",
]

# Tune says it was told to stop (Ctrl-C, SIGUSR1) only in this log line (ray/tune/tune.py).
STOP_LOGGER, STOP_PREFIX = "ray.tune.tune", "Stop signal received"
# Tune logs each trial error's whole trace with this line (ray/tune/execution/tune_controller.py).
ERROR_LOGGER, ERROR_PREFIX = "ray.tune.execution.tune_controller", "Trial task failed for trial"
# Ray Client's head failed to start the server of a connection (ray/util/client/server/proxier.py):
# worth connecting again.
CLIENT_SERVER_FAILED = "Starting Ray client server failed"
# The name of a trial's result file in its folder (ray.tune.result.EXPR_RESULT_FILE).
RESULT_FILE = "result.json"


class RayCompatError(RuntimeError):
    """A Ray internal that a secret or the sweep's correctness depends on is missing."""


def _missing(what: str) -> RayCompatError:
    import ray

    return RayCompatError(
        f"{what} is not in ray {ray.__version__}; resnet-sweep supports {declared('ray')} "
        f"(install the versions in constraints.txt)"
    )


def stop_copying_env(names: tuple[str, ...]) -> None:
    """Tune's driver copies the variables named in class_cache.ENV_VARS_TO_PROPAGATE into every
    trial's runtime_env; take ``names`` out of that set."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        raise _missing("ray.tune.execution.class_cache") from None
    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if not isinstance(propagated, set):
        raise _missing("ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE (a set)")
    propagated.difference_update(names)


def add_trainable_mixins(trainable: Callable, *mixins: type) -> None:
    """Tune's wrap_function puts a function's ``__mixins__`` in the trainable class's bases;
    checked on the spot, as building the class costs nothing."""
    from ray.tune.trainable import wrap_function

    trainable.__mixins__ = mixins
    built = wrap_function(trainable)
    if not all(m in built.__mro__ for m in mixins):
        raise _missing("the __mixins__ of a function trainable (ray.tune.trainable.wrap_function)")


def check_tune_messages() -> None:
    """The two log lines the sweep recognises are still what Tune logs."""
    import ray.tune.execution.tune_controller as controller
    import ray.tune.tune as tune

    for module, prefix in ((tune, STOP_PREFIX), (controller, ERROR_PREFIX)):
        if prefix not in inspect.getsource(module):
            raise _missing(f"the log line {prefix!r} of {module.__name__}")


def refresh_config() -> None:
    """Ray reads RAY_AUTH_MODE into its config at import; re-read it (as ray.init does for
    `auto`) after setting it."""
    try:
        from ray._raylet import Config
    except ImportError:
        raise _missing("ray._raylet.Config") from None
    if not hasattr(Config, "initialize"):
        raise _missing("ray._raylet.Config.initialize")
    Config.initialize("")


def bootstrap_address() -> str | None:
    """The cluster `ray start` recorded on this machine, as `ray.init(address="auto")` finds it."""
    try:
        from ray._private.services import find_bootstrap_address
    except ImportError:
        raise _missing("ray._private.services.find_bootstrap_address") from None
    return find_bootstrap_address(None)


def gcs_client(address: str) -> Any | None:
    """A client of the cluster's GCS at ``address`` (connecting is the check), or None when this
    Ray has none: the caller then lets ray.init report."""
    try:
        from ray._raylet import GcsClient
    except ImportError:
        return None
    return GcsClient(address=address)


def error_filename(trial) -> str | None:
    """The name of a failed trial's error file in its local folder, before Tune syncs it."""
    metadata = getattr(trial, "run_metadata", None)
    return getattr(metadata, "error_filename", None)
