"""Ray: a private local instance, or an existing cluster (`--address`), reached with a clear
line instead of minutes of retries when it is dead, unreachable or wants a token; and what the
sweep needs to know of the cluster (nodes, shared storage, concurrency)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from orchestrator.persistence import storage
from orchestrator.running import ray_compat
from orchestrator.sweepfile.spec import SpecError
from orchestrator.tracking.login import without_login
from orchestrator.vocabulary import error_line

__all__ = [
    "ClusterError",
    "TuneDriverSetup",
    "check_address",
    "check_storage_on_nodes",
    "connect",
    "describe_node",
    "runs_tune_remotely",
    "trial_concurrency",
]

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
PROBE_TIMEOUT_S = 120


class ClusterError(Exception):
    """Ray could not be started or reached (exit code 1)."""


def _token_source() -> str | None:
    """Where a Ray auth token is, in Ray's own order (never the token itself)."""
    if os.environ.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    path = Path(os.environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token").expanduser()
    return str(path) if path.is_file() else None


def _enable_token_auth() -> None:
    """Ray turns token auth on by itself only for a cluster it finds (`auto`), not for an
    explicit address; a token-authenticated cluster then refuses us. Send the token whenever one
    is available (a cluster without auth ignores it) unless the user chose RAY_AUTH_MODE."""
    if AUTH_MODE not in os.environ and _token_source() is not None:
        _set_token_mode()


def _set_token_mode() -> None:
    os.environ[AUTH_MODE] = "token"
    ray_compat.refresh_config()  # Ray caches its config at import


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SpecError("--address", f"{address!r} is not host:port, ray://host:port or auto")
    return host.strip("[]"), int(port)


def check_address(address: str | None) -> None:
    """A malformed --address is bad input, found before anything loads or starts."""
    if address not in (None, "auto"):
        _host_port(address)


def _resolve_auto() -> str:
    """`auto`: $RAY_ADDRESS, else the cluster `ray start` recorded on this machine."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    address = ray_compat.bootstrap_address()
    if not address:
        raise ClusterError(
            "--address auto: no Ray cluster was started on this machine (`ray start --head`) and RAY_ADDRESS is not set"
        )
    return address


def _check_reachable(address: str, shown: str) -> None:
    """Ray retries a dead head for minutes; a port that refuses fails here at once."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        raise ClusterError(
            f"no Ray cluster answers at {shown} ({err.strerror or err}); is it running (`ray status`)? "
            f"Start one with `ray start --head`, or drop --address to run on this machine"
        ) from None


def _check_auth(address: str, shown: str) -> None:
    """Ask the cluster's GCS once: a cluster that wants another token says so at once, where
    ray.init would retry for a minute and then report only "Failed to connect"."""
    from ray.exceptions import AuthenticationError

    try:
        with _native_stderr_silenced():  # Ray's C++ client logs each refusal on fd 2
            ray_compat.gcs_client(address)
    except AuthenticationError:
        source = _token_source()
        if source is None:
            raise ClusterError(
                f"the Ray cluster at {shown} requires an auth token and none was found here: copy the "
                f"head node's ~/.ray/auth_token to this machine (or set {TOKEN_ENV} or {TOKEN_PATH_ENV})"
            ) from None
        raise ClusterError(
            f"the Ray cluster at {shown} rejected the auth token from {source}: use the head node's "
            f"token (its ~/.ray/auth_token)"
        ) from None
    except Exception:
        return


@contextmanager
def _native_stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def _keep_credentials_out_of_runtime_envs() -> None:
    """Ray Tune copies the driver's AWS credentials into every trial's runtime_env, which Ray
    logs in plain text (runtime_env_agent.log) and keeps in its GCS. Trials do not need the
    copy: on this machine they inherit the driver's environment, on a cluster each node's own
    (check_storage_on_nodes proves it works), so the copy is switched off. No Ray option does."""
    ray_compat.stop_copying_env(CREDENTIAL_ENV)


def _one_line(err: Exception) -> str:
    """Ray's text of ``err`` on one line. Ray Client passes on the head's whole traceback; its
    last line is the error that counts."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "Traceback (most recent call last):" in lines:
        return f"{lines[0]} {error_line(str(err))}"
    return " ".join(lines)


def connect(address: str | None, driver_env: dict[str, str] | None = None) -> None:
    """Start a private local Ray (no --address), or attach to the cluster at ``address``.

    ``driver_env`` are settings for the process that runs Tune's loop: this one, or with a
    ``ray://`` address (Ray Client) an actor on the cluster's head, which gets them through the
    job's runtime_env."""
    import ray

    if ray.is_initialized():
        return
    driver_env = {
        "RAY_AIR_NEW_OUTPUT": "0",
        # One checkpoint per epoch is the design (ASHA, retries and node loss cost at most an epoch).
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        # The progress lines and the final table name the runs; MLflow's own links are noise.
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        # Tune's default loggers add TensorBoard files, whose writers (a thread and a queue each)
        # the driver keeps for every finished trial: memory grows per trial. MLflow holds the
        # curves; result.json (JsonLoggerCallback, added by the sweep) is Tune's record.
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        **(driver_env or {}),
    }
    os.environ.update(driver_env)
    options: dict = {
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "logging_config": ray.LoggingConfig(log_level="WARNING"),
    }
    if address is None:
        if os.environ.get("RAY_ADDRESS"):
            print(
                "note: RAY_ADDRESS is set but this sweep runs on a local Ray; pass --address auto to use that cluster",
                file=sys.stderr,
            )
        # "local", not None: a bare ray.init() attaches to any cluster `ray start` recorded on
        # the machine, and retries it for minutes when that cluster has died.
        target = "local"
        options["include_dashboard"] = False
        if AUTH_MODE not in os.environ:  # Ray's default for a new cluster, without its warning
            _set_token_mode()
    else:
        target = _resolve_auto() if address == "auto" else address
        shown = address if address == target else f"{target} (--address {address})"
        _check_reachable(target, shown)
        _enable_token_auth()
        if target.startswith("ray://"):
            # Tune's loop runs on the head: its progress lines come back as its logs.
            options.update(log_to_driver=True, runtime_env={"env_vars": driver_env})
        else:
            _check_auth(target, shown)
    # On resume, Tune warns of every trial that has not started yet: it has no results, rightly.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        _init(ray, target, options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = ""
        if target.startswith("ray://") and _token_source() is None:
            hint = (
                f"; if the cluster uses token auth (Ray's default), copy the head node's ~/.ray/auth_token "
                f"to this machine (or set {TOKEN_ENV})"
            )
        raise ClusterError(f"could not start or reach {where}: {_one_line(err)}{hint}") from None


def _init(ray, target: str, options: dict, attempts: int = 3) -> None:
    for attempt in range(1, attempts + 1):
        try:
            with without_login():  # a local Ray's processes, trials included, start without the MLflow login
                ray.init(address=target, **options)
            return
        except ConnectionError as err:
            # Ray Client's head at times fails to start the server of a new connection (its
            # process exits at once; Ray 2.60, seen with two nodes on one machine); the next
            # connection gets a new one.
            if attempt == attempts or ray_compat.CLIENT_SERVER_FAILED not in str(err):
                raise
            print(
                f"note: the head could not start this connection's Ray Client server; connecting again "
                f"({attempt + 1} of {attempts})",
                file=sys.stderr,
            )
            time.sleep(attempt)


def runs_tune_remotely(address: str | None) -> bool:
    """With Ray Client (ray://) Tune's loop, and so every MLflow write, runs on the head node."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS")
    return bool(address) and address.startswith("ray://")


def check_tracking_reachable_from_tune(address: str | None, tracking_uri: str) -> None:
    """A file-based MLflow store on this machine cannot be written by a Tune loop on the head."""
    if runs_tune_remotely(address) and not tracking_uri.startswith(("http://", "https://")):
        raise SpecError(
            "tracking.tracking_uri",
            f"{tracking_uri} is a file on this machine, but with a ray:// address Tune's loop (which writes to "
            f"MLflow) runs on the cluster's head node: use an MLflow server the head can reach (--tracking-uri "
            f"http://…), or the head's GCS address (--address HEAD:6379) to keep the loop here",
        )


class TuneDriverSetup:
    """A Tune callback for the process that runs Tune's loop, wherever that is (here, or on the
    head with ray://): keeps AWS credentials out of the trials' runtime_envs."""

    def __new__(cls):
        from ray.tune import Callback

        # Built lazily so importing this module does not import Ray.
        class _TuneDriverSetup(Callback):
            def setup(self, **info):
                _keep_credentials_out_of_runtime_envs()

        return _TuneDriverSetup()


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def describe_node(node_id: str | None, hostname: str | None) -> str:
    """How a node is named in progress lines: host and the start of its Ray node id."""
    short = (node_id or "?")[:8]
    return f"{hostname} (node {short})" if hostname else f"node {short}"


def check_storage_on_nodes(storage_path: str) -> None:
    """Every node of the cluster must see the same storage_path (Tune ≥ 2.7 no longer syncs
    through the head): a path that one node cannot use fails here, in seconds, instead of as a
    trial traceback after minutes of training. Nodes that join later are not checked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name, token = storage.probe_file(storage_path)

    @ray.remote(num_cpus=0, max_retries=0)
    def probe(node_file: str) -> str | None:
        return storage.check_from_node(storage_path, name, token, node_file)

    nodes = alive_nodes()
    files = {n["NodeID"]: f"{name}-{n['NodeID'][:12]}" for n in nodes}
    refs = {
        n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            files[n["NodeID"]]
        )
        for n in nodes
    }
    problems = []
    ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)  # one deadline for all
    try:
        for node in nodes:
            where = describe_node(node["NodeID"], node.get("NodeManagerHostname") or node.get("NodeManagerAddress"))
            try:
                reason = ray.get(refs[node["NodeID"]], timeout=0)
            except Exception as err:
                reason = f"the check could not run there in {PROBE_TIMEOUT_S} s ({type(err).__name__})"
            if reason is None and storage.read_text(storage_path, files[node["NodeID"]]) != token:
                reason = "a file it wrote there is not visible from the driver"
            if reason:
                problems.append(f"{where}: {reason}")
    finally:
        storage.remove(storage_path, name, *files.values())
    if problems:
        raise SpecError(
            storage.FIELD,
            f"{storage_path} is not usable from every node of the cluster ({'; '.join(problems)}); every node "
            f"needs it: a folder mounted at the same path on all nodes, or s3://… / gs://… with credentials "
            f"in each node's environment",
        )


def trial_concurrency(spec, *, local: bool) -> int:
    """Trials run at once. Locally: what this machine fits. On a cluster: every trial may be
    pending at once (or max_concurrent), so an autoscaler sees the whole demand and adds nodes;
    the count is never frozen at what the cluster had when the sweep started. 0 = no limit."""
    if spec.max_concurrent:
        return spec.max_concurrent
    if not local:
        return 0
    import ray

    resources = ray.cluster_resources()
    return spec.resources.fitting(resources.get("CPU", 1), resources.get("GPU", 0))
