"""The manifest: written LAST beside an artifact. No manifest, no backup.

Layout of one backup series (readable without this project):

    <storage root>/<kind>/<source>/<cadence>/<partition>/manifest-<written at>-<random>.json   (one per run)
    <storage root>/<kind>/<source>/<cadence>/<partition>/<source>_<partition>_<written at>-<random>.<ext>
    <storage root>/<kind>/<source>/<cadence>/<partition>/manifest.json      (older layout: still read)

A manifest's `["artifact"]["key"]` names its data object; a data object no manifest points to is an
unfinished upload and is ignored by every reader. Nothing is ever overwritten: a re-run adds a manifest
and an object beside the earlier ones, and only retention deletes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import BackupError, DamagedArtifact
from ..secrets import redact_data
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
    key: str = ""  # where this manifest is stored (not part of its JSON)

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
        """The stored form, with every registered secret masked in its strings (digests stay as they are)."""
        return json.dumps(redact_data(self.data), indent=2, sort_keys=False).encode() + b"\n"


def series_prefix(kind: str, source: str, cadence: str) -> str:
    return f"{kind}/{source}/{cadence}"


class Series(str):
    """A series prefix (new artifacts are written under it) that also reads older prefixes of the same source.

    PostgreSQL series were once keyed by the database name in the URL (`postgres/<database>/daily`); they are now
    keyed by the source's stable name. Readers (restores, checks, retention) see both, so a series started before
    the upgrade stays restorable and under retention; writers only ever use the new one."""

    legacy: tuple[str, ...]

    def __new__(cls, prefix: str, legacy: tuple[str, ...] = ()):
        series = super().__new__(cls, prefix)
        series.legacy = tuple(p for p in dict.fromkeys(legacy) if p and p != prefix)
        return series


def read_prefixes(series: str) -> tuple[str, ...]:
    return (str(series), *getattr(series, "legacy", ()))


def partition_prefix(series: str, partition: str) -> str:
    return f"{series}/{partition}"


# ------------------------------------------------------------------------------------------ layout
# Every run writes its own manifest, `manifest-<written at>-<random>.json`, and never overwrites one: two runs
# of a partition (a re-run, a retry, a backfill, two CLIs at once) both stay, and an object-locked bucket works.
# A partition's current artifact is its newest valid manifest. `manifest.json` (one per partition, the layout
# before per-run manifests) is still read, as the oldest manifest of its partition.
RUN_MANIFEST_PREFIX = "manifest-"


def is_manifest_name(name: str) -> bool:
    return name == MANIFEST_NAME or (name.startswith(RUN_MANIFEST_PREFIX) and name.endswith(".json"))


def _write_order(key: str) -> tuple[int, str]:
    name = key.rsplit("/", 1)[-1]
    return (0, "") if name == MANIFEST_NAME else (1, name)


def run_token(now: datetime | None = None) -> str:
    """`<UTC to the microsecond>Z-<8 hex>`: sorts by time, and two runs in one microsecond still differ."""
    return f"{(now or utc_now()).astimezone(UTC):%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}"


def new_manifest_key(series: str, partition: str) -> str:
    return f"{partition_prefix(series, partition)}/{RUN_MANIFEST_PREFIX}{run_token()}.json"


@dataclass(frozen=True)
class SeriesIndex:
    """One listing of a series, grouped by partition: manifest keys (oldest written first) and the other
    objects (data objects, finished or not)."""

    manifests: dict[str, list[str]]
    objects: dict[str, list[str]]

    @property
    def partitions(self) -> list[str]:
        """Partitions with at least one manifest, oldest first (partition keys sort by time)."""
        return sorted(self.manifests)


def index_series(storage: Storage, series: str, partition: str | None = None) -> SeriesIndex:
    """List a series (or one partition of it) once. A listing error raises StorageReadError: an unreadable
    bucket is never an empty one."""
    manifests: dict[str, list[str]] = {}
    objects: dict[str, list[str]] = {}
    for root in read_prefixes(series):
        prefix = f"{partition_prefix(root, partition)}/" if partition else f"{root}/"
        for key in storage.list_keys(prefix):
            rest = key[len(root) + 1 :]
            if "/" not in rest:
                continue  # something at the series root is not a partition's
            part, name = rest.split("/", 1)
            (manifests if is_manifest_name(name) else objects).setdefault(part, []).append(key)
    for keys in manifests.values():
        keys.sort(key=_write_order)
    return SeriesIndex(manifests, objects)


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


def _newest_valid_of(storage: Storage, keys: list[str]) -> Manifest | None:
    for key in reversed(keys):
        try:
            manifest = parse_manifest(storage, key)
        except DamagedArtifact:
            continue
        if is_present(storage, manifest):
            return manifest
    return None


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
    result = []
    for partition in index.partitions:
        for key in index.manifests[partition]:
            try:
                manifest = parse_manifest(storage, key)
            except DamagedArtifact:
                continue
            if is_present(storage, manifest):
                result.append(manifest)
    return sorted(result, key=lambda m: (m.taken_at, _write_order(m.key)))
