"""Where a sweep's Tune results live: a local folder, a folder every node mounts (NFS), or an
object store (``s3://`` incl. S3-compatible servers, ``gs://``), read and written through
pyarrow's filesystems, the same ones Ray Tune uses.

Credentials never travel in the storage URI: pyarrow and Tune take them from each process's
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for
S3-compatible servers, or the instance's role), so they reach no log, tag or saved file.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.sweepfile.spec import SpecError

__all__ = [
    "check_from_node",
    "check_usable",
    "claim_name",
    "default_storage_path",
    "exists",
    "file_names",
    "is_local",
    "join",
    "local_folder_problem",
    "normalize",
    "probe_file",
    "read_bytes",
    "read_text",
    "reason",
    "remove",
    "subfolders",
    "tune_filesystem",
    "write_text",
]

FIELD = "storage_path"


def default_storage_path() -> str:
    return str(Path.cwd() / "ray_results")


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def normalize(path: str, field: str = FIELD) -> str:
    """An absolute local path, or a remote URI that carries no credentials."""
    if is_local(path):
        return str(Path(path.removeprefix("file://")).expanduser().resolve())
    parts = urlsplit(path)
    if parts.query:
        raise SpecError(
            field,
            f"{parts.scheme}:// URI with a query (?…); Tune appends folder names to the URI, and a query "
            f"may hold keys that would be printed and saved: give an S3-compatible server's address in "
            f"AWS_ENDPOINT_URL instead",
        )
    if not parts.netloc:  # S3 would look for the bucket '' on AWS: seconds of retries, then a DNS error
        raise SpecError(field, f"{path} names no bucket: give {parts.scheme}://BUCKET/FOLDER")
    if parts.password or parts.username:
        raise SpecError(
            field,
            f"{parts.scheme}:// URI with credentials in it; keep them out of the URI (it is printed and "
            f"saved) and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an "
            f"S3-compatible server) in the environment instead",
        )
    return path


def join(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def tune_filesystem(storage: str):
    """The pyarrow filesystem Tune and Ray Train read and write ``storage`` through: whole files
    for a local folder; None (Tune's own choice) for an object store."""
    if not is_local(storage):
        return None
    import pyarrow.fs

    from orchestrator.persistence.whole_files import WholeFileLocalFS

    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(WholeFileLocalFS(auto_mkdir=True)))


def _filesystem(uri: str):
    import pyarrow.fs

    if is_local(uri):
        return tune_filesystem(uri), str(Path(uri.removeprefix("file://")).resolve())
    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    return fs, root.rstrip("/")


def write_text(folder: str, filename: str, text: str) -> None:
    fs, root = _filesystem(folder)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{filename}") as out:
        out.write(text.encode())


def read_text(folder: str, filename: str) -> str | None:
    """The file's text, or None when it (or the storage) is not there."""
    data = read_bytes(folder, filename)
    return None if data is None else data.decode()


def read_bytes(folder: str, filename: str, *, only_missing_is_none: bool = False) -> bytes | None:
    """The file's bytes, or None when it (or the storage) is not there. ``only_missing_is_none``:
    None only for a file that is not there; any other failure raises (a read that failed
    says nothing about what the file holds)."""
    import pyarrow

    try:
        fs, root = _filesystem(folder)
        with fs.open_input_stream(f"{root}/{filename}") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except (OSError, ValueError, pyarrow.ArrowException):
        if only_missing_is_none:
            raise
        return None


def _entries(folder: str, strict: bool = False) -> list:
    """pyarrow FileInfo of what is directly in ``folder`` ([] when it, or the storage, is not
    there; ``strict``: [] only when it is not there, any other failure raises)."""
    import pyarrow
    import pyarrow.fs

    try:
        fs, root = _filesystem(folder)
        return fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except (OSError, ValueError, pyarrow.ArrowException):
        if strict:
            raise
        return []


def file_names(folder: str, *, strict: bool = False) -> list[str]:
    """The names of the files directly in ``folder`` (``strict``: see _entries)."""
    import pyarrow.fs

    return [Path(i.path).name for i in _entries(folder, strict) if i.type == pyarrow.fs.FileType.File]


def subfolders(folder: str, prefix: str) -> list[str]:
    """URIs of the folders directly under ``folder`` whose names start with ``prefix``."""
    import pyarrow.fs

    return [
        join(folder, Path(i.path).name)
        for i in _entries(folder)
        if i.type == pyarrow.fs.FileType.Directory and Path(i.path).name.startswith(prefix)
    ]


def exists(uri: str) -> bool:
    import pyarrow.fs

    fs, root = _filesystem(uri)
    return fs.get_file_info(root).type != pyarrow.fs.FileType.NotFound


def claim_name(storage: str, name: str, marker: str, text: str) -> str:
    """A folder for a new sweep: ``name``, or ``name-2``, ``name-3`` … when a sweep of that name
    is already in the storage (local or remote), so a new sweep never writes into an old one.
    The folder is claimed by writing ``marker`` into it; locally the claim is atomic (mkdir), so
    two sweeps started at once get two names."""
    candidate, k = name, 2
    while True:
        folder = join(storage, candidate)
        if is_local(storage):
            try:
                Path(folder).mkdir(parents=True)
            except FileExistsError:
                candidate, k = f"{name}-{k}", k + 1
                continue
        elif exists(folder):
            candidate, k = f"{name}-{k}", k + 1
            continue
        write_text(folder, marker, text)
        return candidate


def reason(err: Exception) -> str:
    """An exception as one short line (its type and first line)."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")


def check_usable(storage: str) -> None:
    """SpecError naming storage_path when the driver cannot use the storage (no bucket, no
    credentials, endpoint down, read-only…). A local folder is not created here: nothing is
    written before the sweep starts."""
    if is_local(storage):
        problem = local_folder_problem(Path(storage))
        if problem:
            raise SpecError(FIELD, f"cannot use {storage}: {problem}")
        return
    name, token = probe_file(storage)
    readable = read_text(storage, name) == token
    remove(storage, name)
    if not readable:
        raise SpecError(FIELD, f"cannot use {storage} from this machine (a file written there could not be read back)")


def local_folder_problem(path: Path) -> str | None:
    """Why a local folder cannot be created or written to, else None. The probe is an unnamed
    temporary file in the nearest folder that exists (os.access says yes to root everywhere),
    so nothing is left behind."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"{existing} is not writable: {err.strerror or err}"
    return None


def probe_file(storage: str) -> tuple[str, str]:
    """A fresh probe file's name and content, written by the driver (for itself or the nodes to
    read back); SpecError naming storage_path when it cannot be written (no bucket, no
    credentials, endpoint down, read-only…)."""
    name, token = f".resnet-sweep-probe-{uuid.uuid4().hex}", uuid.uuid4().hex
    try:
        write_text(storage, name, token)
    except Exception as err:
        raise SpecError(FIELD, f"cannot use {storage} from this machine ({reason(err)})") from None
    return name, token


def check_from_node(storage: str, name: str, token: str, node_file: str) -> str | None:
    """Run on a node: read the driver's probe and write one of the node's own; None when both
    work, else why not. Reading what the driver wrote proves the storage is shared, not a
    folder that merely exists on both machines."""
    try:
        if read_text(storage, name) != token:
            return "a file the driver wrote there is not visible from this node"
        write_text(storage, node_file, token)
    except Exception as err:
        return reason(err)
    return None


def remove(storage: str, *names: str) -> None:
    """Delete probe files, best effort: one left behind is harmless."""
    import pyarrow

    try:
        fs, root = _filesystem(storage)
        for name in names:
            try:
                fs.delete_file(f"{root}/{name}")
            except OSError:
                pass
    except (OSError, ValueError, pyarrow.ArrowException):
        pass
