"""Where MLflow is and how to reach it: the tracking URI (default, normalized, checked before
anything starts, its login kept out of sight) and a client for it. Ray-free: `status`, `report`
and `ui` use it without starting Ray."""

from __future__ import annotations

import base64
import fcntl
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from orchestrator.persistence import storage

__all__ = [
    "LOGIN_ENV",
    "PASSWORD",
    "USERNAME",
    "TrackingUnavailableError",
    "check_scheme",
    "check_tracking_uri",
    "default_tracking_uri",
    "normalize_tracking_uri",
    "open_client",
    "redact",
    "secret_in",
    "use_tracking_uri",
]


class TrackingUnavailableError(RuntimeError):
    pass


def default_tracking_uri() -> str:
    """MLflow's own default since 3.7: a SQLite file in the working directory."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def normalize_tracking_uri(uri: str) -> str:
    """Relative SQLite paths are made absolute so the UI and resume find the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith(("/", ":memory:")):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


HTTP_SCHEMES = ("http", "https")
# MLflow's SQLAlchemy stores (dialect, or dialect+driver) and its other tracking URIs.
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
OTHER_SCHEMES = ("file", "databricks")
USERNAME, PASSWORD, TOKEN = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"
LOGIN_ENV = (USERNAME, PASSWORD, TOKEN)  # how MLflow's client takes a login (basic auth, bearer token)
# Query parameters that carry a secret (libpq's password, sslpassword; tokens, keys, signatures).
SECRET_PARAM = re.compile(r"pass|pwd|token|secret|key|auth|credential|sig", re.IGNORECASE)
# MLflow's client retries a failed request 7 times with backoff (minutes): the driver's Tune
# loop would stall on every write during an outage. The tracker queues and retries instead.
# Its download progress bars would print one line per artifact `report` reads.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_database_uris: dict[str, str] = {}  # URI as stored and shown → with its secrets (memory only)


def _scheme(uri: str) -> str:
    return urllib.parse.urlsplit(uri).scheme.split("+", 1)[0].lower()


def _query_secrets(query: str) -> list[tuple[str, str]]:
    """The secret (name, raw value) pairs of a URI's query, values as written (percent-encoded)."""
    pairs = [part.partition("=") for part in query.split("&") if part]
    return [(name, value) for name, _, value in pairs if SECRET_PARAM.search(urllib.parse.unquote_plus(name))]


def secret_in(uri: str) -> str | None:
    """What in the URI is a secret (its password, or a query parameter that holds one), or None."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is not None:
        return "a password"
    names = [urllib.parse.unquote_plus(name) for name, _ in _query_secrets(parts.query)]
    return f"a secret in its query ({', '.join(names)}=…)" if names else None


def use_tracking_uri(uri: str) -> str:
    """The tracking URI as given → as stored and shown: without its secrets, which never reach
    output, the Tune folder (Tune pickles its callbacks) or MLflow. A login in an http(s) URI goes
    to MLflow's client as MLFLOW_TRACKING_USERNAME/PASSWORD; a database's password and its query's
    secrets (``?password=…``) stay in this process's memory. An http(s) query is refused by
    check_tracking_uri: MLflow's client cannot send one."""
    uri = normalize_tracking_uri(uri)
    parts = urllib.parse.urlsplit(uri)
    if _scheme(uri) != "sqlite" and "@" in uri.split("://", 1)[-1] and "@" not in parts.netloc:
        # A login holding '/', '?' or '#' as they are: the URL parser takes part of the password
        # for the host, path or query, where it would be shown. The URI is not repeated here.
        raise TrackingUnavailableError(
            f"the tracking URI's login holds '/', '?' or '#': percent-encode them (%2F, %3F, %23), or give the "
            f"login in {USERNAME} and {PASSWORD}"
        )
    hidden = _query_secrets(parts.query)
    if parts.password is None and parts.username is None and not hidden:
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(
        part
        for part in parts.query.split("&")
        if part and part.partition("=") not in [(name, "=", value) for name, value in hidden]
    )
    scheme = _scheme(uri)
    if scheme in HTTP_SCHEMES:
        if parts.username is not None or parts.password is not None:
            os.environ[USERNAME] = urllib.parse.unquote(parts.username or "")
            os.environ[PASSWORD] = urllib.parse.unquote(parts.password or "")
        shown = urllib.parse.urlunsplit(parts._replace(netloc=host, query=query))
        if hidden:
            _hidden_query[shown] = [value for _, value in hidden]
        return shown
    shown = urllib.parse.urlunsplit(
        parts._replace(netloc=f"{parts.username}@{host}" if parts.username else host, query=query)
    )
    _database_uris[shown] = uri
    return shown


_hidden_query: dict[str, list[str]] = {}  # an http(s) URI as shown → its query's secrets (for redaction)


def _secrets() -> list[str]:
    found = [os.environ.get(PASSWORD), os.environ.get(TOKEN)]
    for uri in _database_uris.values():
        parts = urllib.parse.urlsplit(uri)
        found += [parts.password] + [value for _, value in _query_secrets(parts.query)]
    found += [value for values in _hidden_query.values() for value in values]
    return [s for s in found if s]


def redact(text: str) -> str:
    """Any credential this process holds, replaced in text about to be shown: as written in a
    URI (percent-encoded), decoded, and encoded again."""
    for secret in sorted(_secrets(), key=len, reverse=True):
        for form in {
            secret,
            urllib.parse.unquote_plus(secret),
            urllib.parse.unquote(secret),
            urllib.parse.quote(secret, safe=""),
            urllib.parse.quote(urllib.parse.unquote(secret), safe=""),
            urllib.parse.quote_plus(urllib.parse.unquote_plus(secret)),
        }:
            if form:
                text = text.replace(form, "***")
    return text


def check_tracking_uri(uri: str, timeout: float = 30.0) -> None:
    """Fail fast, before Ray starts, on a tracking URI that cannot work: malformed, an unknown
    scheme, a SQLite file that cannot be written, a server that is down or refuses the login.
    ``uri`` is as use_tracking_uri returns it."""
    scheme = check_scheme(uri)
    if scheme in HTTP_SCHEMES and (uri in _hidden_query or urllib.parse.urlsplit(uri).query):
        raise TrackingUnavailableError(
            f"{uri} has a query, which MLflow's client cannot send with its requests; give a token in "
            f"{TOKEN} (or a login as http://USER:PASSWORD@HOST:PORT) instead"
        )
    if scheme in HTTP_SCHEMES:
        _check_server(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in DATABASE_SCHEMES:
        try:
            open_client(uri).search_experiments(max_results=1)
        except Exception as err:
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
        raise TrackingUnavailableError(
            f"{uri!r} is not a SQLite file URI; use sqlite:///PATH.db (an in-memory store keeps nothing)"
        )
    file = Path(path)
    if file.is_dir():
        raise TrackingUnavailableError(
            f"{file} is a folder; name the store's file, e.g. sqlite:///{file / 'mlflow.db'}"
        )
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
    elif os.environ.get(TOKEN):
        request.add_header("Authorization", f"Bearer {os.environ[TOKEN]}")
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
        raise TrackingUnavailableError(
            f"the MLflow server at {uri} answers /health but not its API ({redact(str(getattr(err, 'reason', err)))})"
        ) from None


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
