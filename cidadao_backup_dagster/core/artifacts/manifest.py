"""The manifest: written LAST beside an artifact. No manifest, no backup.

Where manifests and data objects live is layout.py's (readable without this project); a manifest's
`["artifact"]["key"]` names its data object, and a data object no manifest points to is an unfinished upload,
ignored by every reader. Nothing is ever overwritten: a re-run adds a manifest and an object beside the
earlier ones, and only retention deletes. What a manifest holds is read through the typed sections of
sections.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from ..errors import BackupError, DamagedArtifact
from ..secrets import redact_data
from .clock import iso as iso  # re-exported: most callers take the time format from here
from .clock import parse_iso as parse_iso  # re-exported, as iso
from .clock import utc_now as utc_now  # re-exported, as iso
from .layout import _write_order, index_series, new_manifest_key, run_token
from .sections import (
    ArtifactInfo,
    ExportContents,
    PitrBase,
    PostgresContents,
    RedisContents,
    RunInfo,
    SourceInfo,
    Timings,
    ToolVersions,
)
from .storage import Storage

FORMAT_VERSION = 1  # the "format_version" every writer puts in a manifest


@dataclass(frozen=True)
class Manifest:
    """One manifest. `data` is the stored JSON exactly as read or written (new fields never break readers,
    and what is written keeps its keys); the typed sections below are what code reads."""

    data: dict[str, Any]
    key: str = ""  # where this manifest is stored (not part of its JSON)

    def to_dict(self) -> dict[str, Any]:
        """The raw document, for code that needs a field no section types."""
        return self.data

    @property
    def format_version(self) -> int:
        return int(self.data.get("format_version", FORMAT_VERSION))

    @property
    def kind(self) -> str:
        return self.data.get("kind", "")

    @property
    def partition(self) -> str:
        return self.data["partition"]

    @property
    def dagster_partition(self) -> str:
        """The Dagster partition key (redis stores an hour's segment as `partition`, the key beside it)."""
        return self.data.get("dagster_partition", self.partition)

    @cached_property
    def artifact(self) -> ArtifactInfo:
        return ArtifactInfo.parse(self.data["artifact"])

    @cached_property
    def timings(self) -> Timings:
        return Timings.parse(self.data["timings"])

    @cached_property
    def source(self) -> SourceInfo:
        return SourceInfo.parse(self.data.get("source", {}))

    @cached_property
    def run(self) -> RunInfo:
        return RunInfo.parse(self.data.get("run"))

    @property
    def late(self) -> bool:
        return self.run.late

    @cached_property
    def tools(self) -> ToolVersions:
        return ToolVersions.parse(self.data.get("tools"))

    @cached_property
    def postgres(self) -> PostgresContents:
        return PostgresContents.parse(self.data.get("contents", {}))

    @cached_property
    def redis(self) -> RedisContents:
        return RedisContents.parse(self.data.get("contents", {}))

    @cached_property
    def export(self) -> ExportContents:
        return ExportContents.parse(self.data.get("contents", {}))

    @cached_property
    def pitr_base(self) -> PitrBase:
        return PitrBase.parse(self.data["base"])

    # The artifact's fields under the names most callers use.
    artifact_key = property(lambda self: self.artifact.key)
    stored_bytes = property(lambda self: self.artifact.stored_bytes)
    stored_sha256 = property(lambda self: self.artifact.stored_sha256)
    raw_bytes = property(lambda self: self.artifact.raw_bytes)
    raw_sha256 = property(lambda self: self.artifact.raw_sha256)

    @property
    def encrypted(self) -> bool:
        return self.artifact.encryption is not None

    @property
    def taken_at(self) -> datetime:
        """When the source was read (the snapshot), which is what the RPO is measured from."""
        return parse_iso(self.timings.snapshot_at)

    @property
    def tables(self) -> dict[str, int]:
        return dict(self.postgres.tables)

    def to_json(self) -> bytes:
        """The stored form, with every registered secret masked in its strings (digests stay as they are)."""
        return json.dumps(redact_data(self.data), indent=2, sort_keys=False).encode() + b"\n"


# ------------------------------------------------------------------------------------------ write


def write_manifest(storage: Storage, series: str, manifest: Manifest) -> Manifest:
    """Write `manifest` under a name of its own (never an existing one). Returns it with its key."""
    key = new_manifest_key(series, manifest.partition)
    storage.put_bytes(key, manifest.to_json())
    return Manifest(manifest.data, key)


def publish(storage: Storage, series: str, manifest: Manifest) -> Manifest:
    """The one publish step every artifact class ends with, after its data object was committed: check what
    storage now holds against what was streamed, then write the per-run manifest LAST. Nothing older is
    touched: superseded artifacts go only by retention."""
    stored = storage.size(manifest.artifact_key)
    if stored != manifest.stored_bytes:
        # Never published (no manifest names it), so removing it loses nothing.
        storage.delete(manifest.artifact_key)
        raise BackupError(
            f"{storage.uri(manifest.artifact_key)} holds {stored} bytes after upload, expected "
            f"{manifest.stored_bytes}; it was removed and earlier artifacts are untouched"
        )
    return write_manifest(storage, series, manifest)


def data_object_name(source: str, partition: str, suffix: str) -> str:
    """`<source>_<partition>_<run token><suffix>`: unique per run, so no run ever replaces another's object."""
    return f"{source}_{partition}_{run_token()}{suffix}"


# ------------------------------------------------------------------------------------------ read


def parse_manifest(storage: Storage, key: str) -> Manifest:
    """Read one manifest. StorageReadError when storage cannot be read; DamagedArtifact when it does not parse."""
    raw = storage.read_bytes(key)
    try:
        manifest = Manifest(json.loads(raw), key)
        manifest.artifact_key, manifest.stored_bytes, manifest.taken_at, manifest.partition  # noqa: B018
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DamagedArtifact(f"{storage.uri(key)} is not a readable manifest ({exc})") from None
    return manifest


def read_manifest(storage: Storage, series: str, partition: str) -> Manifest | None:
    """The partition's newest manifest (the last run that published), or None when it has none. Raises
    DamagedArtifact when that newest manifest does not parse: integrity must see it, not an older one."""
    keys = index_series(storage, series, partition).manifests.get(partition, [])
    return parse_manifest(storage, keys[-1]) if keys else None


def is_present(storage: Storage, manifest: Manifest) -> bool:
    """Cheap validity: the data object exists with the manifest's size. Deep checks re-read it."""
    return storage.size(manifest.artifact_key) == manifest.stored_bytes


def _valid_at(storage: Storage, key: str) -> Manifest | None:
    """The manifest at `key` when it parses and its object is present; None when it is damaged or orphaned."""
    try:
        manifest = parse_manifest(storage, key)
    except DamagedArtifact:
        return None
    return manifest if is_present(storage, manifest) else None


def _newest_valid_of(storage: Storage, keys: list[str]) -> Manifest | None:
    return next(filter(None, (_valid_at(storage, key) for key in reversed(keys))), None)


def newest_valid(storage: Storage, series: str, partition: str) -> Manifest | None:
    """The partition's current artifact: its newest manifest that parses and whose object is present."""
    return _newest_valid_of(storage, index_series(storage, series, partition).manifests.get(partition, []))


def list_partitions(storage: Storage, series: str) -> list[str]:
    """Partitions of a series that have a manifest, oldest first (partition keys sort by time)."""
    return index_series(storage, series).partitions


def valid_manifests(
    storage: Storage, series: str, before: str | None = None, *, limit: int | None = None
) -> list[Manifest]:
    """Each partition's current artifact, oldest partition first; optionally only partitions < `before`.
    Damaged ones are skipped; a storage read error propagates (a check must not pass on what it could not read).

    `limit=N` keeps only the newest N, and reads no further back than it needs to (a series of daily
    partitions grows by 365 a year; a check that compares with the last few should not fetch them all)."""
    index = index_series(storage, series)
    result = []
    for partition in reversed(index.partitions):
        if before is not None and partition >= before:
            continue
        if limit is not None and len(result) >= limit:
            break
        manifest = _newest_valid_of(storage, index.manifests[partition])
        if manifest is not None:
            result.append(manifest)
    result.reverse()
    return result


def all_valid_manifests(storage: Storage, series: str) -> list[Manifest]:
    """Every valid artifact of a series (all runs of every partition), oldest snapshot first: what "the
    backup taken before X" is chosen from, by snapshot time, never by label."""
    index = index_series(storage, series)
    keys = [key for partition in index.partitions for key in index.manifests[partition]]
    result = [m for m in (_valid_at(storage, key) for key in keys) if m is not None]
    return sorted(result, key=lambda m: (m.taken_at, _write_order(m.key)))
