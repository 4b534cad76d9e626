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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from ..errors import BackupError, DamagedArtifact
from ..secrets import redact_data
from .storage import Storage

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1  # the "format_version" every writer puts in a manifest


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ------------------------------------------------------------------------------------------ typed sections
# Each section is parsed from the stored JSON when first read. Fields every manifest has are read strictly
# (a manifest without them is damaged); the rest default, so older layouts and partial documents still read.


def opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Encryption:
    format: str
    recipients: tuple[str, ...]

    @classmethod
    def parse(cls, data: dict | None) -> Encryption | None:
        if not data:
            return None
        return cls(str(data.get("format", "")), tuple(data.get("recipients", ())))


@dataclass(frozen=True)
class ArtifactInfo:
    """`artifact`: the data object, its sizes and hashes, and how it is encoded."""

    key: str
    uri: str
    stored_bytes: int
    stored_sha256: str
    raw_bytes: int | None = None
    raw_sha256: str | None = None
    format: str = ""
    encryption: Encryption | None = None
    lines: int | None = None  # exports: lines in the uncompressed file

    @classmethod
    def parse(cls, data: dict) -> ArtifactInfo:
        return cls(
            key=data["key"],
            uri=data.get("uri", data["key"]),
            stored_bytes=int(data["stored_bytes"]),
            stored_sha256=data.get("stored_sha256", ""),
            raw_bytes=opt_int(data.get("raw_bytes")),
            raw_sha256=data.get("raw_sha256"),
            format=data.get("format", ""),
            encryption=Encryption.parse(data.get("encryption")),
            lines=opt_int(data.get("lines")),
        )

    @property
    def compression_ratio(self) -> float:
        return round((self.raw_bytes or 0) / max(self.stored_bytes, 1), 3)


@dataclass(frozen=True)
class Timings:
    """`timings`, as stored (ISO 8601 UTC text); `snapshot_at` is when the source was read."""

    snapshot_at: str
    started_at: str | None = None
    finished_at: str | None = None
    payload_started_at: str | None = None  # redis: when the RDB payload began
    total_seconds: float | None = None
    work_seconds: float | None = None  # dump (postgres), fetch (redis) or export (exports) seconds
    raw_mb_per_s: float | None = None

    @classmethod
    def parse(cls, data: dict) -> Timings:
        work = next((data[k] for k in ("dump_seconds", "fetch_seconds", "export_seconds") if k in data), None)
        return cls(
            snapshot_at=data["snapshot_at"],
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            payload_started_at=data.get("payload_started_at"),
            total_seconds=_opt_float(data.get("total_seconds")),
            work_seconds=_opt_float(work),
            raw_mb_per_s=_opt_float(data.get("raw_mb_per_s")),
        )


@dataclass(frozen=True)
class SourceInfo:
    """`source`: what was read (credentials are never stored; `url` is the display form)."""

    url: str = ""
    host: str | None = None
    port: int | None = None
    user: str | None = None
    database: str | None = None  # postgres, exports
    server_version: str | None = None  # postgres, exports
    table: str | None = None  # exports
    name: str | None = None  # redis: the source's name
    redis_version: str | None = None  # redis

    @classmethod
    def parse(cls, data: dict) -> SourceInfo:
        return cls(
            url=data.get("url", ""),
            host=data.get("host"),
            port=opt_int(data.get("port")),
            user=data.get("user"),
            database=data.get("database"),
            server_version=data.get("server_version"),
            table=data.get("table"),
            name=data.get("name"),
            redis_version=data.get("redis_version"),
        )


@dataclass(frozen=True)
class ToolVersions:
    """`tools`: what wrote it. Each domain records its own (pg_dump, redis-py, psycopg/zlib, zstandard)."""

    cidadao_backup_dagster: str | None = None
    python: str | None = None
    host: str | None = None
    pg_dump: str | None = None
    pg_dump_path: str | None = None  # which pg_dump binary (chosen per server major)
    redis_py: str | None = None
    psycopg: str | None = None
    zstandard: str | None = None
    zlib: str | None = None

    @classmethod
    def parse(cls, data: dict | None) -> ToolVersions:
        data = data or {}
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RunInfo:
    """`run`: who wrote it (Dagster run, asset), and whether the partition was written after its window."""

    dagster_run_id: str | None = None
    asset: str | None = None
    late: bool = False
    on_demand: bool = False
    reason: str | None = None

    @classmethod
    def parse(cls, data: dict | None) -> RunInfo:
        data = data or {}
        return cls(
            dagster_run_id=data.get("dagster_run_id"),
            asset=data.get("asset"),
            late=bool(data.get("late")),
            on_demand=bool(data.get("on_demand")),
            reason=data.get("reason"),
        )


@dataclass(frozen=True)
class PostgresContents:
    """A pg_dump's `contents`: the exact row count of every table in the snapshot."""

    tables: dict[str, int] = field(default_factory=dict)
    table_count: int = 0
    rows_total: int = 0

    @classmethod
    def parse(cls, data: dict) -> PostgresContents:
        tables = {str(t): int(n) for t, n in data.get("tables", {}).items()}
        return cls(tables, int(data.get("table_count", len(tables))), int(data.get("rows_total", sum(tables.values()))))


@dataclass(frozen=True)
class RedisContents:
    """A Redis snapshot's `contents`: keys per database, and for an RDB what its header and trailer said."""

    format: str = ""  # "rdb" or "logical"
    keys_per_db: dict[str, int] = field(default_factory=dict)
    expires_per_db: dict[str, int] = field(default_factory=dict)
    keys_total: int = 0
    rdb_version: int | None = None
    rdb_bytes: int | None = None
    crc64: str | None = None
    crc64_verified: bool | None = None
    redis_version_in_rdb: str | None = None
    diskless_transfer: bool | None = None
    keys_vanished_during_scan: int | None = None
    fallback_reason: str | None = None

    @classmethod
    def parse(cls, data: dict) -> RedisContents:
        keys = {str(db): int(n) for db, n in data.get("keys_per_db", {}).items()}
        return cls(
            format=data.get("format", ""),
            keys_per_db=keys,
            expires_per_db={str(db): int(n) for db, n in data.get("expires_per_db", {}).items()},
            keys_total=int(data.get("keys_total", sum(keys.values()))),
            rdb_version=opt_int(data.get("rdb_version")),
            rdb_bytes=opt_int(data.get("rdb_bytes")),
            crc64=data.get("crc64"),
            crc64_verified=data.get("crc64_verified"),
            redis_version_in_rdb=data.get("redis_version_in_rdb"),
            diskless_transfer=data.get("diskless_transfer"),
            keys_vanished_during_scan=opt_int(data.get("keys_vanished_during_scan")),
            fallback_reason=data.get("fallback_reason"),
        )


@dataclass(frozen=True)
class ExportWindow:
    column: str
    start: str
    end: str


@dataclass(frozen=True)
class ExportColumn:
    name: str
    type: str


@dataclass(frozen=True)
class ExportContents:
    """A table export's `contents`: its table, columns (name and type), records sent and rows counted."""

    table: str = ""
    columns: tuple[ExportColumn, ...] = ()
    records: int = 0  # rows COPY sent
    source_rows: int | None = None  # count(*) of the same rows in the same snapshot
    window: ExportWindow | None = None

    @classmethod
    def parse(cls, data: dict) -> ExportContents:
        window = data.get("window")
        return cls(
            table=data.get("table", ""),
            columns=tuple(ExportColumn(c["name"], c["type"]) for c in data.get("columns", [])),
            records=int(data.get("records", 0)),
            source_rows=opt_int(data.get("source_rows")),
            window=ExportWindow(window["column"], window["start"], window["end"]) if window else None,
        )


@dataclass(frozen=True)
class PitrBase:
    """A PITR base backup's `base`: where its WAL starts and ends (recovery replays WAL from `start_lsn`)."""

    timeline: int
    start_lsn: str
    end_lsn: str
    start_segment: str = ""
    end_segment: str = ""
    segment_size: int | None = None
    slot: str | None = None
    label: str | None = None
    backup_start_time: str | None = None

    @classmethod
    def parse(cls, data: dict) -> PitrBase:
        return cls(
            timeline=int(data["timeline"]),
            start_lsn=data["start_lsn"],
            end_lsn=data["end_lsn"],
            start_segment=data.get("start_segment", ""),
            end_segment=data.get("end_segment", ""),
            segment_size=opt_int(data.get("segment_size")),
            slot=data.get("slot"),
            label=data.get("label"),
            backup_start_time=data.get("backup_start_time"),
        )


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
    def encrypted(self) -> bool:
        return bool(self.data.get("artifact", {}).get("encryption"))

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
