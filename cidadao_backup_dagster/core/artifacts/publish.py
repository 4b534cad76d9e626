"""The one path from a stream to a published artifact, shared by the PostgreSQL and Redis backups and the
table exports: write a new data object -> commit it -> write its manifest LAST (manifest.publish checks the
stored size first and removes an object that does not match).

A failed write or commit aborts the upload, so nothing partial stays; an error from storage or a driver
(anything that is not already a BackupError) becomes one that says where, that nothing stayed, and what
is untouched, typed by write_error_type (a denied write is permanent).
"""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from ... import __version__
from ..errors import BackupError
from .layout import partition_prefix
from .manifest import FORMAT_VERSION, Manifest, data_object_name, iso, publish, utc_now
from .pipeline import StreamStats
from .storage import MiB, ObjectWriter, Storage, write_error_hint, write_error_type

T = TypeVar("T")


def safe_name(text: str) -> str:
    """`text` as one storage key segment: anything but letters, digits, `-`, `_` and `.` becomes `_`."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def data_key(series: str, partition: str, source: str, suffix: str) -> str:
    """The key of a new data object: a name of this run's own, so no run ever replaces another's object."""
    return f"{partition_prefix(series, partition)}/{data_object_name(safe_name(source), partition, suffix)}"


class NewObject:
    """One data object on its way to publication: `write()` streams (and by default commits) it, `commit()`
    commits a written one later, `publish()` writes its manifest."""

    def __init__(self, storage: Storage, key: str, *, redact: Callable[[str], str], untouched: str):
        self.storage, self.key = storage, key
        self._redact = redact
        self._untouched = untouched  # what a failure leaves as it was: "earlier backups are untouched"
        self._writer: ObjectWriter | None = None

    @property
    def uri(self) -> str:
        return self.storage.uri(self.key)

    def _error(self, exc: Exception, doing: str, what_stayed: str) -> BackupError:
        return write_error_type(exc)(
            f"{doing} {self.uri} failed ({type(exc).__name__}: {self._redact(str(exc))}); {what_stayed}"
            f"{self._untouched}." + write_error_hint(exc)
        )

    def write(self, produce: Callable[[ObjectWriter], T], *, commit: bool = True) -> T:
        """Run `produce(writer)` into a new upload, then commit it (unless `commit=False`)."""
        self._writer = writer = self.storage.open_write(self.key)
        try:
            result = produce(writer)
            if commit:
                writer.commit()
        except BaseException as exc:
            writer.abort()
            if isinstance(exc, Exception) and not isinstance(exc, BackupError):
                raise self._error(exc, "Writing", "the partial upload was removed and ") from exc
            raise
        return result

    def commit(self) -> None:
        """Commit what `write(..., commit=False)` streamed."""
        assert self._writer is not None, "write() first"
        try:
            self._writer.commit()
        except BaseException as exc:
            self._writer.abort()
            if isinstance(exc, Exception):
                raise self._error(exc, "Committing", "") from exc
            raise

    def publish(self, series: str, data: dict[str, Any]) -> Manifest:
        """LAST: from here on the artifact exists for readers."""
        return publish(self.storage, series, Manifest(data))


# ------------------------------------------------------------------------------------ manifest parts


def artifact_entry(
    obj: NewObject, stats: StreamStats, *, describe: dict[str, Any], compression: dict, encryption: dict | None
) -> dict[str, Any]:
    """The manifest's `artifact`: where the object is, how to read it (`describe`), and its digests."""
    return {
        "key": obj.key,
        "uri": obj.uri,
        **describe,
        "compression": compression,
        "encryption": encryption,
        "raw_bytes": stats.raw_bytes,
        "raw_sha256": stats.raw_sha256,
        "stored_bytes": stats.stored_bytes,
        "stored_sha256": stats.stored_sha256,
    }


def tool_versions(before: dict[str, str] | None = None, **libraries: str) -> dict[str, str]:
    """The manifest's `tools`: what wrote the artifact, and where."""
    return {
        **(before or {}),
        "cidadao_backup_dagster": __version__,
        **libraries,
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }


def run_timings(
    started_at: datetime,
    snapshot_at: datetime,
    t0: float,
    work: tuple[str, float],
    raw_bytes: int,
    also: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest's `timings`, finished now; `t0` is the run's monotonic start and `work` (name, seconds) the
    streaming step the throughput is taken over."""
    name, seconds = work
    finished_at = utc_now()
    return {
        "started_at": iso(started_at),
        "snapshot_at": iso(snapshot_at),
        **(also or {}),
        "finished_at": iso(finished_at),
        name: round(seconds, 3),
        "total_seconds": round(time.monotonic() - t0, 3),
        "raw_mb_per_s": round(raw_bytes / MiB / max(seconds, 1e-9), 2),
    }


def manifest_data(
    *, kind: str, partition: str, series: str, extra: dict | None, head: dict | None = None, **sections: Any
) -> dict[str, Any]:
    """A manifest's JSON: `kind`, `partition` (then `head`), `series`, the sections in order, `run` last."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "partition": partition,
        **(head or {}),
        "series": series,
        **sections,
        **({"run": extra} if extra else {}),
    }
