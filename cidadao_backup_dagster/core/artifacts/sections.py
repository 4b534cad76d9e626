"""Typed records read from stored JSON: a manifest's sections (and, through `read_fields`, drill reports).

Each section is parsed from the stored JSON when first read. Fields every manifest has are read strictly
(a manifest without them is damaged); the rest default, so older layouts and partial documents still read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Self, TypeVar

T = TypeVar("T")


def opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def counts(value: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in (value or {}).items()}


# How a stored value becomes a field's value, by the field's declared type (the annotation's text: modules
# here use `from __future__ import annotations`). Text and flags are kept as stored.
CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "int | None": opt_int,
    "float": float,
    "float | None": opt_float,
    "bool": bool,
    "dict[str, int]": counts,
}


def _required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def read_fields(cls: type[T], data: Mapping[str, Any], **given: Any) -> T:
    """The dataclass `cls` read from its stored dict: each field from the key of its name, converted by its
    declared type. A field without a default is one every stored record has (KeyError when it is missing:
    the document is damaged); an absent optional one keeps its default. `given` supplies the fields that are
    not read one to one (derived, nested, or defaulting to another field)."""
    values = dict(given)
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in given and (f.name in data or _required(f)):
            values[f.name] = CONVERTERS.get(str(f.type), lambda v: v)(data[f.name])
    return cls(**values)


class Section:
    """A record read field by field (`read_fields`); an absent section reads as an empty one. Records that
    derive or nest fields override `parse`."""

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> Self:
        return read_fields(cls, data or {})


@dataclass(frozen=True)
class Encryption:
    format: str
    recipients: tuple[str, ...]

    @classmethod
    def parse(cls, data: dict | None) -> Encryption | None:
        if not data:
            return None
        return cls(str(data.get("format", "")), tuple(data.get("recipients", ())))


@dataclass(frozen=True, kw_only=True)
class ArtifactInfo:
    """`artifact`: the data object, its sizes and hashes, and how it is encoded."""

    key: str
    uri: str  # defaults to the key
    stored_bytes: int
    stored_sha256: str = ""
    raw_bytes: int | None = None
    raw_sha256: str | None = None
    format: str = ""
    encryption: Encryption | None = None
    lines: int | None = None  # exports: lines in the uncompressed file

    @classmethod
    def parse(cls, data: dict) -> ArtifactInfo:
        uri = data.get("uri", data["key"])
        return read_fields(cls, data, uri=uri, encryption=Encryption.parse(data.get("encryption")))

    @property
    def compression_ratio(self) -> float:
        return round((self.raw_bytes or 0) / max(self.stored_bytes, 1), 3)


@dataclass(frozen=True, kw_only=True)
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
        return read_fields(cls, data, work_seconds=opt_float(work))


@dataclass(frozen=True, kw_only=True)
class SourceInfo(Section):
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


@dataclass(frozen=True, kw_only=True)
class ToolVersions(Section):
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


@dataclass(frozen=True, kw_only=True)
class RunInfo(Section):
    """`run`: who wrote it (Dagster run, asset), and whether the partition was written after its window."""

    dagster_run_id: str | None = None
    asset: str | None = None
    late: bool = False
    on_demand: bool = False
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class PostgresContents:
    """A pg_dump's `contents`: the exact row count of every table in the snapshot."""

    tables: dict[str, int] = field(default_factory=dict)
    table_count: int = 0  # defaults to the tables'
    rows_total: int = 0  # defaults to the tables'

    @classmethod
    def parse(cls, data: dict) -> PostgresContents:
        tables = counts(data.get("tables"))
        return cls(
            tables=tables,
            table_count=int(data.get("table_count", len(tables))),
            rows_total=int(data.get("rows_total", sum(tables.values()))),
        )


@dataclass(frozen=True, kw_only=True)
class RedisContents:
    """A Redis snapshot's `contents`: keys per database, and for an RDB what its header and trailer said."""

    format: str = ""  # "rdb" or "logical"
    keys_per_db: dict[str, int] = field(default_factory=dict)
    expires_per_db: dict[str, int] = field(default_factory=dict)
    keys_total: int = 0  # defaults to the sum of keys_per_db
    # an RDB's
    rdb_version: int | None = None
    rdb_bytes: int | None = None
    crc64: str | None = None
    crc64_verified: bool | None = None
    redis_version_in_rdb: str | None = None
    diskless_transfer: bool | None = None
    # a logical snapshot's
    keys_vanished_during_scan: int | None = None
    fallback_reason: str | None = None

    @classmethod
    def parse(cls, data: dict) -> RedisContents:
        keys = counts(data.get("keys_per_db"))
        return read_fields(cls, data, keys_per_db=keys, keys_total=int(data.get("keys_total", sum(keys.values()))))


@dataclass(frozen=True)
class ExportWindow:
    column: str
    start: str
    end: str


@dataclass(frozen=True)
class ExportColumn:
    name: str
    type: str


@dataclass(frozen=True, kw_only=True)
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
        return read_fields(
            cls,
            data,
            columns=tuple(ExportColumn(c["name"], c["type"]) for c in data.get("columns", [])),
            window=ExportWindow(window["column"], window["start"], window["end"]) if window else None,
        )


@dataclass(frozen=True, kw_only=True)
class PitrBase(Section):
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
