"""A local folder as storage: 0600 files and 0700 folders, each write an atomic, fsynced rename."""

from __future__ import annotations

import errno
import logging
import os
import uuid
from pathlib import Path
from typing import BinaryIO

from ...errors import BackupError, PermanentError, StorageAccessDenied, StorageReadError
from .base import DIR_MODE, FILE_MODE, ObjectWriter, Storage

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, an unlink, a new subdirectory) survive a power loss: fsync of the
    file alone does not persist its name (pgBackRest and Barman do the same)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # a filesystem that cannot sync directories (as PostgreSQL tolerates)
            raise
    finally:
        os.close(fd)


def _make_dirs(folder: Path, root: Path) -> None:
    """Create `folder` and its missing parents, outermost first, each followed by an fsync of its parent.
    Those at or under `root` are made 0700 whatever the umask (chmod after mkdir: the umask only narrows,
    and an odd one could even take the owner's own bits away); those above it are the operator's ground
    and get the default mode, as `mkdir -p` would. A folder that already exists is never changed."""
    missing = [d for d in (folder, *folder.parents) if not d.exists()]
    for new_dir in reversed(missing):
        private = new_dir == root or root in new_dir.parents
        try:
            new_dir.mkdir(mode=DIR_MODE if private else 0o777)
        except FileExistsError:  # a concurrent writer made it first (with the same mode if it is ours)
            continue
        if private:
            os.chmod(new_dir, DIR_MODE)
        _fsync_dir(new_dir.parent)  # each new directory's entry lives in its parent


def _create_private(path: Path) -> BinaryIO:
    """A new file open for writing, 0600 from its first instant (never readable by others, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # exact, even under a umask that would narrow it below 0600
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise


class _LocalWriter(ObjectWriter):
    def __init__(self, final: Path, root: Path):
        self._final = final
        _make_dirs(final.parent, root)
        # Same directory as the final file, so the commit is an atomic rename (which keeps the 0600 mode).
        self._tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
        self._f = _create_private(self._tmp)

    def write(self, data: bytes | memoryview) -> int:
        return self._f.write(data)

    def commit(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self._final)
        _fsync_dir(self._final.parent)  # the rename itself is durable only once its directory is synced

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self._tmp.unlink(missing_ok=True)


class LocalStorage(Storage):
    """A local folder. Files are 0600 and the folders this process creates (the root too, when it makes it)
    0700; a root the operator made keeps its mode, with a warning when others can read it."""

    _warned: set[Path] = set()  # roots already warned about in this process

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise BackupError(f"Key {key!r} escapes the storage root {self.root}")
        return path

    def check_writable(self) -> None:
        try:
            _make_dirs(self.root, self.root)
            probe = self.root / f".write-probe-{uuid.uuid4().hex[:8]}"
            _create_private(probe).close()
            probe.unlink()
        except OSError as exc:
            raise PermanentError(
                f"Local backup folder {self.root} is not writable ({exc.strerror}). "
                "Fix: create it with write permission for this user, or point BACKUP_STORAGE_URL elsewhere."
            ) from exc
        self._warn_if_shared()

    def _warn_if_shared(self) -> None:
        """A root the operator made is left as it is; say so once when group or others can enter it."""
        mode = self.root.stat().st_mode & 0o777
        if mode & 0o077 and self.root not in LocalStorage._warned:
            LocalStorage._warned.add(self.root)
            log.warning(
                "Local backup folder %s is mode %o: group or others can reach the backups in it. Folders and "
                "files this worker creates are 0700/0600, but it does not change a folder it did not make. "
                "Fix: chmod 700 %s",
                self.root,
                mode,
                self.root,
            )

    def open_write(self, key: str) -> ObjectWriter:
        return _LocalWriter(self._path(key), self.root)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise BackupError(f"{self.uri(key)} does not exist") from exc
        except OSError as exc:  # permission, I/O error: unsure, never "absent"
            raise _local_read_error(self.uri(key), exc) from None

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _local_read_error(self.uri(key), exc) from None

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            if not base.exists():
                return []
            return sorted(
                p.relative_to(self.root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and ".partial-" not in p.name and not p.name.startswith(".write-probe")
            )
        except OSError as exc:
            raise _local_read_error(self.uri(prefix), exc) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)  # so a deletion cannot reappear after a power loss


def _local_read_error(uri: str, exc: OSError) -> StorageReadError:
    error = StorageAccessDenied if isinstance(exc, PermissionError) else StorageReadError
    return error(f"{uri} cannot be read ({exc.strerror or type(exc).__name__}). Fix: check the folder's permissions "
                 "and the disk; nothing was treated as missing")  # fmt: skip
