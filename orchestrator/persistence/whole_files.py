"""A local filesystem for pyarrow (through fsspec) in which each file written appears whole or
not at all: Tune's experiment state, searcher state and trial checkpoints in a local (or NFS)
storage folder."""

from __future__ import annotations

import io
import os
import uuid

from fsspec.implementations.local import LocalFileSystem

__all__ = ["WholeFileLocalFS", "remove_unfinished"]


class _WholeFile(io.FileIO):
    """A file being written under a temporary name next to its own, given its name once it is
    whole (flushed to disk, then renamed: atomic on one file system, NFS included). A write
    that fails (a full disk), or a writer that drops the file without closing it (pyarrow's
    copy when its source fails), leaves the old file as it was."""

    def __init__(self, path: str) -> None:
        self.final = path
        self.temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.part")
        # os.open's mode goes through the umask, as a plain open()'s does (mkstemp's 0600 would not).
        super().__init__(os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
        self.failed = False

    def write(self, data) -> int:
        # A raw write may take only part (a disk filling up); pyarrow ignores the count.
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[super().write(view) :]
        except BaseException:
            self.failed = True
            raise
        return len(data)

    def __del__(self) -> None:
        if not self.closed:  # dropped unclosed: its writer stopped midway
            self.failed = True
        super().__del__()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self.failed:
                os.fsync(self.fileno())
        except OSError:
            self.failed = True
            raise
        finally:
            super().close()
            if self.failed:
                os.unlink(self.temporary)
            else:
                os.replace(self.temporary, self.final)
                _sync_folder(os.path.dirname(self.final))


def _sync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable: without it a power loss may bring the old name back."""
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # a folder some file systems cannot fsync: the rename is still atomic
        pass
    finally:
        os.close(fd)


class WholeFileLocalFS(LocalFileSystem):  # keep its name and module: Tune's saved state refers to them
    """The local disk (or a mounted NFS folder) where each file written appears whole or not at
    all. pyarrow's local copy truncates the file first: a driver killed while Tune copies its
    experiment state into the storage folder (every few seconds) left it empty or cut short,
    and the sweep could not be resumed. Object stores need no help: an object appears whole.
    (Hand-written: fsspec's uncommitted files live in the system temp folder, so their move
    into a storage folder on another disk would be a copy again.)"""

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        if "w" in mode and "+" not in mode:
            path = self._strip_protocol(path)
            if self.auto_mkdir:
                self.makedirs(self._parent(path), exist_ok=True)
            return _WholeFile(path)
        return super()._open(path, mode, block_size=block_size, **kwargs)


def remove_unfinished(folder: str, older_than_s: float = 0) -> int:
    """Delete the temporary files that writers killed midway left under ``folder`` (run only by
    the driver that holds the sweep) and that are older than ``older_than_s`` by the folder's own
    clock (a driver that lost the sweep may still be finishing one); how many there were."""
    import tempfile

    with tempfile.NamedTemporaryFile(dir=folder, prefix=".now-", suffix=".probe") as probe:
        now = os.fstat(probe.fileno()).st_mtime  # the file system's clock, not this machine's
    removed = 0
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if name.startswith(".") and name.endswith(".part"):
                try:
                    if os.stat(path).st_mtime <= now - older_than_s:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:  # finished meanwhile
                    pass
    return removed
