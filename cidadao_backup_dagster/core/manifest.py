"""The manifest: written LAST beside an artifact. No manifest, no backup.

Layout of one backup series (readable without this project):

    <storage root>/<kind>/<source>/<cadence>/<partition>/manifest.json
    <storage root>/<kind>/<source>/<cadence>/<partition>/<source>_<partition>_<taken-at>.<ext>

`manifest.json["artifact"]["key"]` names the data object; a data object no manifest points to is an
unfinished or superseded upload and is ignored by every reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import BackupError
from .storage import Storage

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Manifest:
    """A thin typed view over the manifest's JSON (kept as a dict so new fields never break readers)."""

    data: dict[str, Any]

    @property
    def partition(self) -> str:
        return self.data["partition"]

    @property
    def artifact_key(self) -> str:
        return self.data["artifact"]["key"]

    @property
    def stored_bytes(self) -> int:
        return int(self.data["artifact"]["stored_bytes"])

    @property
    def stored_sha256(self) -> str:
        return self.data["artifact"]["stored_sha256"]

    @property
    def raw_bytes(self) -> int:
        return int(self.data["artifact"]["raw_bytes"])

    @property
    def raw_sha256(self) -> str:
        return self.data["artifact"]["raw_sha256"]

    @property
    def taken_at(self) -> datetime:
        """When the source was read (the snapshot), which is what the RPO is measured from."""
        return parse_iso(self.data["timings"]["snapshot_at"])

    @property
    def tables(self) -> dict[str, int]:
        return dict(self.data.get("contents", {}).get("tables", {}))

    def to_json(self) -> bytes:
        return json.dumps(self.data, indent=2, sort_keys=False).encode() + b"\n"


def series_prefix(kind: str, source: str, cadence: str) -> str:
    return f"{kind}/{source}/{cadence}"


def partition_prefix(series: str, partition: str) -> str:
    return f"{series}/{partition}"


def write_manifest(storage: Storage, series: str, manifest: Manifest) -> str:
    key = f"{partition_prefix(series, manifest.partition)}/{MANIFEST_NAME}"
    storage.put_bytes(key, manifest.to_json())
    return key


def read_manifest(storage: Storage, series: str, partition: str) -> Manifest | None:
    key = f"{partition_prefix(series, partition)}/{MANIFEST_NAME}"
    if storage.size(key) is None:
        return None
    try:
        data = json.loads(storage.read_bytes(key))
        manifest = Manifest(data)
        manifest.artifact_key, manifest.stored_bytes, manifest.taken_at  # noqa: B018 - validates shape
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{storage.uri(key)} is not a readable manifest ({exc})") from None
    return manifest


def list_partitions(storage: Storage, series: str) -> list[str]:
    """Partitions of a series that have a manifest, oldest first (partition keys sort by time)."""
    suffix = f"/{MANIFEST_NAME}"
    out = []
    for key in storage.list_keys(f"{series}/"):
        if key.endswith(suffix):
            out.append(key[len(series) + 1 : -len(suffix)])
    return sorted(out)


def is_present(storage: Storage, manifest: Manifest) -> bool:
    """Cheap validity: the data object exists with the manifest's size. Deep checks re-read it."""
    return storage.size(manifest.artifact_key) == manifest.stored_bytes


def valid_manifests(
    storage: Storage, series: str, before: str | None = None, *, limit: int | None = None
) -> list[Manifest]:
    """Manifests whose object is present, oldest partition first; optionally only partitions < `before`.

    `limit=N` keeps only the newest N valid ones, and reads no further back than it needs to (a series
    of daily partitions grows by 365 a year; a check that compares with the last few should not fetch
    every manifest ever written)."""
    partitions = [p for p in list_partitions(storage, series) if before is None or p < before]
    result = []
    for partition in reversed(partitions):
        if limit is not None and len(result) >= limit:
            break
        try:
            manifest = read_manifest(storage, series, partition)
        except BackupError:
            continue
        if manifest is not None and is_present(storage, manifest):
            result.append(manifest)
    result.reverse()
    return result


def remove_superseded(storage: Storage, series: str, manifest: Manifest) -> list[str]:
    """After a new manifest landed, delete older data objects of the same partition."""
    removed = []
    for key in storage.list_keys(f"{partition_prefix(series, manifest.partition)}/"):
        if key != manifest.artifact_key and not key.endswith(f"/{MANIFEST_NAME}"):
            storage.delete(key)
            removed.append(key)
    return removed
