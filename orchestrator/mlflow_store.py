"""Where MLflow is and how to reach it: the tracking URI (default, normalized, checked before
anything starts, its login kept out of sight) and a client for it. Ray-free: `status`, `report`
and `ui` use it without starting Ray."""
from __future__ import annotations

import base64
import fcntl
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from . import storage

__all__ = ["TrackingUnavailableError", "check_scheme", "check_tracking_uri", "default_tracking_uri",
           "normalize_tracking_uri", "open_client", "redact", "use_tracking_uri", "PASSWORD", "USERNAME"]


class TrackingUnavailableError(RuntimeError):
    pass


def default_tracking_uri() -> str:
    """MLflow's own default since 3.7: a SQLite file in the working directory."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def normalize_tracking_uri(uri: str) -> str:
    """Relative SQLite paths are made absolute so the UI and resume find the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith(("/", ":memory:")):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


HTTP_SCHEMES = ("http", "https")
# MLflow's SQLAlchemy stores (dialect, or dialect+driver) and its other tracking URIs.
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
OTHER_SCHEMES = ("file", "databricks")
USERNAME, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
# MLflow's client retries a failed request 7 times with backoff (minutes): the driver's Tune
# loop would stall on every write during an outage. The tracker queues and retries instead.
# Its download progress bars would print one line per artifact `report` reads.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "60", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
_database_uris: dict[str, str] = {}  # URI as stored and shown → with its password (memory only)


def _scheme(uri: str) -> str:
    return urllib.parse.urlsplit(uri).scheme.split("+", 1)[0].lower()


def use_tracking_uri(uri: str) -> str:
    """The tracking URI as given → as stored and shown: without credentials, which never reach
    output, the Tune folder (Tune pickles its callbacks) or MLflow. A login in an http(s) URI goes
    to MLflow's client as MLFLOW_TRACKING_USERNAME/PASSWORD; a database password stays here."""
    uri = normalize_tracking_uri(uri)
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    scheme = _scheme(uri)
    if scheme in HTTP_SCHEMES:
        shown = urllib.parse.urlunsplit(parts._replace(netloc=host))
        os.environ[USERNAME] = urllib.parse.unquote(parts.username or "")
        os.environ[PASSWORD] = urllib.parse.unquote(parts.password or "")
        return shown
    shown = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@{host}" if parts.username else host))
    _database_uris[shown] = uri
    return shown


def _secrets() -> list[str]:
    found = [os.environ.get(PASSWORD)] + [urllib.parse.urlsplit(u).password for u in _database_uris.values()]
    return [s for s in found if s]


def redact(text: str) -> str:
    """Any credential this process holds, replaced in text about to be shown."""
    for secret in _secrets():
        text = text.replace(secret, "***").replace(urllib.parse.quote(secret, safe=""), "***")
    return text


def check_tracking_uri(uri: str, timeout: float = 30.0) -> None:
    """Fail fast, before Ray starts, on a tracking URI that cannot work: malformed, an unknown
    scheme, a SQLite file that cannot be written, a server that is down or refuses the login.
    ``uri`` is as use_tracking_uri returns it."""
    scheme = check_scheme(uri)
    if scheme in HTTP_SCHEMES:
        _check_server(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in DATABASE_SCHEMES:
        try:
            open_client(uri).search_experiments(max_results=1)
        except Exception as err:  # noqa: BLE001 — a driver error, a refused login, no server …
            first = redact(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
            raise TrackingUnavailableError(f"cannot use the MLflow database {uri} ({first})") from None


def check_scheme(uri: str) -> str:
    """The URI's scheme, when it is one of MLflow's tracking stores."""
    scheme = _scheme(uri)
    if "://" not in uri or scheme not in (*HTTP_SCHEMES, *DATABASE_SCHEMES, *OTHER_SCHEMES):
        raise TrackingUnavailableError(
            f"{uri!r} is not an MLflow tracking URI (scheme {scheme or 'missing'}); use sqlite:///PATH.db, "
            f"http(s)://HOST:PORT, or postgresql:// / mysql:// / mssql:// database URIs"
        )
    return scheme


def _check_sqlite(uri: str) -> None:
    path = uri.removeprefix("sqlite:///")
    if not uri.startswith("sqlite:///") or not path or path == ":memory:":
        raise TrackingUnavailableError(f"{uri!r} is not a SQLite file URI; use sqlite:///PATH.db (an in-memory store keeps nothing)")
    file = Path(path)
    if file.is_dir():
        raise TrackingUnavailableError(f"{file} is a folder; name the store's file, e.g. sqlite:///{file / 'mlflow.db'}")
    if not file.parent.is_dir():
        raise TrackingUnavailableError(f"cannot create {file}: the folder {file.parent} does not exist")
    problem = storage.local_folder_problem(file.parent)  # SQLite writes a journal beside the file
    if problem is None and file.exists():
        try:
            file.open("r+b").close()
        except OSError as err:
            problem = f"{file} is not writable: {err.strerror or err}"
    if problem:
        raise TrackingUnavailableError(f"cannot write {file}: {problem}")


def _check_server(uri: str, timeout: float) -> None:
    """/health says the server is up; one cheap API call says whether it accepts this login."""
    if not urllib.parse.urlsplit(uri).hostname:
        raise TrackingUnavailableError(f"{uri!r} names no host; use http(s)://HOST:PORT")
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(base + "/health", timeout=timeout) as response:
            if response.status != 200:
                raise TrackingUnavailableError(f"MLflow server at {uri} answered {response.status} on /health")
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = redact(str(getattr(err, "reason", err)))
        raise TrackingUnavailableError(
            f"no MLflow server answers at {uri} ({reason}); start one (mlflow server …) or pass another --tracking-uri"
        ) from None
    request = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search?max_results=1")
    if os.environ.get(USERNAME) or os.environ.get(PASSWORD):
        login = f"{os.environ.get(USERNAME, '')}:{os.environ.get(PASSWORD, '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(login).decode())
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            given = "refused the login given" if request.has_header("Authorization") else "requires a login"
            raise TrackingUnavailableError(
                f"the MLflow server at {uri} {given} ({err.code}); pass http://USER:PASSWORD@HOST:PORT or set "
                f"{USERNAME} and {PASSWORD}"
            ) from None
    except (urllib.error.URLError, OSError) as err:
        raise TrackingUnavailableError(f"the MLflow server at {uri} answers /health but not its API "
                                       f"({redact(str(getattr(err, 'reason', err)))})") from None


def open_client(uri: str):
    """An MlflowClient whose store is ready. MLflow creates and migrates a new SQLite store on
    first use; two sweeps started at once on the same file (two terminals) would race in its
    migrations and fail, so the first use takes a lock beside the file."""
    from mlflow import MlflowClient

    for key, value in CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    uri = _database_uris.get(uri, uri)
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    with open(f"{uri.removeprefix('sqlite:///')}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client
