"""Picking a stored Redis snapshot and fetching it to local disk, checking both SHA-256s on the way."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..artifacts.manifest import Manifest, list_partitions, read_manifest, valid_manifests
from ..artifacts.reader import read_artifact
from ..artifacts.storage import MiB, Storage
from ..errors import BackupError
from .backup import partition_segment

_PARTITION = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}:?\d{2}$")


def select_snapshot(storage: Storage, series: str, which: str = "latest") -> Manifest:
    """`latest` = the newest valid partition; else an hourly partition key (2026-11-24-13:00 or 2026-11-24-1300)."""
    which = (which or "latest").strip()
    if which == "latest":
        valid = valid_manifests(storage, series, limit=1)
        if not valid:
            raise BackupError(f"No valid Redis snapshot under {storage.uri(series)}: nothing to restore")
        return valid[-1]
    if not _PARTITION.match(which):
        raise BackupError(f"Snapshot {which!r} is not an hourly partition key: use e.g. 2026-11-24-13:00 (or 'latest')")
    segment = partition_segment(which)
    manifest = read_manifest(storage, series, segment)
    if manifest is None:
        known = list_partitions(storage, series)
        hint = f"; the newest are {', '.join(known[-5:])}" if known else "; there are none"
        raise BackupError(f"No snapshot for partition {which} under {storage.uri(series)}{hint}")
    if storage.size(manifest.artifact_key) != manifest.stored_bytes:
        raise BackupError(f"Snapshot {which} is not valid: {storage.uri(manifest.artifact_key)} is missing or resized")
    return manifest


def snapshot_format(manifest: Manifest) -> str:
    return manifest.redis.format or "rdb"


def fetch_snapshot(storage: Storage, manifest: Manifest, workdir: Path, identities: list | None = None) -> Path:
    """Download and decompress into `workdir`, checking both SHA-256s; nothing is used from bytes that differ."""
    free = shutil.disk_usage(workdir).free
    if free < manifest.raw_bytes * 1.05:
        raise BackupError(
            f"Not enough space in {workdir} for the {manifest.raw_bytes / MiB:,.0f} MiB snapshot "
            f"({free / MiB:,.0f} MiB free). Fix: point RESTORE_TMPDIR at a bigger volume"
        )
    path = workdir / ("dump.rdb" if snapshot_format(manifest) == "rdb" else "snapshot.resp")
    with open(path, "wb") as out:
        outcome = read_artifact(storage, manifest, out.write, identities=identities)
    problems = outcome.problems(manifest)
    if outcome.shallow:
        problems.append("the snapshot is encrypted: set BACKUP_AGE_IDENTITY_FILE to the age identity to restore it")
    if problems:
        path.unlink(missing_ok=True)
        raise BackupError(
            f"Refusing to restore {storage.uri(manifest.artifact_key)}: {'; '.join(problems)}. Pick another snapshot"
        )
    return path
