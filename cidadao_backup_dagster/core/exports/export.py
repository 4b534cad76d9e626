"""Critical data exports: tables as gzip JSON Lines or gzip CSV, streamed out of PostgreSQL with COPY.

The strategy's "Critical Data Exports" made safe to run unattended and to read back:

- `investigations` -> one gzip JSON Lines object per UTC day of `created_at` (a `row_to_json` object per
  line, timestamps ISO 8601 with offset, jsonb nested); the strategy's "last 7 days" is the union of the
  last seven partitions.
- `agent_instances` -> a weekly full snapshot as gzip CSV with a header (`COPY ... TO STDOUT WITH CSV HEADER`).

Each partition goes through the backups' path: COPY -> SHA-256 (raw) -> gzip -> [encryption] -> SHA-256
(stored) -> storage, then `manifest.json` LAST. Rows are never held in memory: the server streams COPY
data, the pipeline handles it in 1 MiB chunks. One REPEATABLE READ transaction covers every partition of
a run, so each partition's exact `count(*)` and its COPY see the same snapshot, and a backfilled month is
one consistent read.

Layout (mirrors the backups):

    exports/<database>/<table>/<cadence>/<partition>/manifest.json
    exports/<database>/<table>/<cadence>/<partition>/<table>_<partition>_<snapshot time>.jsonl.gz | .csv.gz
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import platform
import socket
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg import sql

from ... import __version__
from ..artifacts.crypto import DecryptingReader
from ..artifacts.manifest import Manifest, data_object_name, iso, partition_prefix, publish, series_prefix, utc_now
from ..artifacts.pipeline import EncryptionStage, Progress, stream_to_writer
from ..artifacts.reader import HashingReader
from ..artifacts.storage import MiB, Storage, write_error_hint, write_error_type
from ..errors import BackupError, ConfigurationError
from ..monitoring.health import Verdict, freshness_verdict
from ..postgres.backup import safe_name
from ..postgres.client import PgConnection

log = logging.getLogger(__name__)

Format = Literal["jsonl", "csv"]

# The strategy's columns for `investigations`; `*` (every column, in table order) for `agent_instances`.
INVESTIGATIONS_COLUMNS = ("id", "query", "status", "results", "metadata", "created_at")
TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")

# row_to_json never emits a raw control character (it escapes them as \n, \u0001, ...), so CSV mode with
# these two as QUOTE and DELIMITER passes every JSON line through untouched. Plain text-format COPY (what
# the strategy's one-liner uses) would double every backslash: `"a \"quote\""` comes out as
# `"a \\"quote\\""`, which is not the same JSON, or not JSON at all.
_JSON_PASSTHROUGH = sql.SQL("WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')")


class ExportSchemaError(BackupError):
    """The configured table, column or time column does not exist (or cannot be exported) in the source."""


# ------------------------------------------------------------------------------------------ configuration


def parse_table(text: str, variable: str) -> tuple[str | None, str]:
    """`investigations` or `schema.table` -> (schema or None, table). Names are taken literally (case kept)."""
    text = (text or "").strip()
    parts = [p.strip() for p in text.split(".")] if text else []
    if not parts or len(parts) > 2 or not all(parts):
        raise ConfigurationError(variable, f"{text!r} is not a table name", "use table or schema.table")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def parse_columns(text: str, variable: str) -> tuple[str, ...] | None:
    """`id,query,status` -> ('id', 'query', 'status'); `*` (or empty) -> None, meaning every column."""
    text = (text or "").strip()
    if text in ("", "*"):
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ConfigurationError(variable, f"{text!r} has an empty column name", "list names like id,query,status")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigurationError(variable, f"lists {', '.join(dupes)} more than once", "name each column once")
    return tuple(names)


@dataclass(frozen=True)
class ExportSpec:
    """What one export series reads and how it writes it."""

    table: str  # as configured: `investigations` or `schema.table`
    fmt: Format
    columns: tuple[str, ...] | None = None  # None = every column, in table order
    time_column: str | None = None  # partitions select rows by it; None = full snapshot per partition
    table_variable: str = "export table"  # the setting named in errors
    columns_variable: str = "export columns"
    time_column_variable: str = "export time column"

    @property
    def extension(self) -> str:
        return "jsonl.gz" if self.fmt == "jsonl" else "csv.gz"

    def series(self, database: str, cadence: str) -> str:
        return series_prefix("exports", f"{safe_name(database)}/{safe_name(self.table)}", cadence)


@dataclass(frozen=True)
class ExportSettings:
    gzip_level: int = 6
    gzip_threads: int = -1  # deflate workers, -1 = one per core (still one standard gzip member)
    progress_every: float = 10.0


@dataclass(frozen=True)
class Window:
    """One partition: its key and, for time-partitioned exports, the half-open [start, end) it covers."""

    key: str
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(): `jsonb`, `timestamp with time zone`, `character varying(20)`, ...

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type}


@dataclass(frozen=True)
class ResolvedTable:
    schema: str
    name: str
    columns: tuple[Column, ...]  # the exported ones, in export order
    time_column: Column | None
    time_column_indexed: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


# --------------------------------------------------------------------------------------------- session


class ExportSession:
    """One read-only REPEATABLE READ transaction: every count and COPY of a run sees the same snapshot.

    Session settings make the output independent of the server's and role's defaults: UTC (row_to_json
    writes `2026-11-24T10:00:00.123456+00:00`), ISO dates, UTF-8, and no statement/idle timeouts that a
    managed server may set per role (a large export must not be killed halfway)."""

    def __init__(self, conn: PgConnection):
        self._pg = conn
        self.conn = conn.connect(autocommit=True)
        try:
            for setting in (
                "SET statement_timeout = 0",
                "SET idle_in_transaction_session_timeout = 0",
                "SET TimeZone = 'UTC'",
                "SET DateStyle = 'ISO, MDY'",
                "SET IntervalStyle = 'postgres'",
                "SET client_encoding = 'UTF8'",
                "SET extra_float_digits = 1",
            ):
                self.conn.execute(setting)
            self.conn.autocommit = False
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self.conn.read_only = True
            # now() is the transaction's start: the moment the snapshot was taken, which the RPO is measured from.
            self.server_version, self.database, self.taken_at = self.conn.execute(
                "SELECT current_setting('server_version'), current_database(), now()"
            ).fetchone()
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        try:
            self.conn.rollback()
        finally:
            self.conn.close()

    def __enter__(self) -> ExportSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema

    def resolve(self, spec: ExportSpec) -> ResolvedTable:
        """Check that the table, the columns and the time column exist; fail naming the one that does not."""
        schema, name = parse_table(spec.table, spec.table_variable)
        regclass = sql.Identifier(*([schema] if schema else []), name).as_string(self.conn)
        row = self.conn.execute(
            """SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)""",
            (regclass,),
        ).fetchone()
        if row is None:
            where = f"schema {schema!r}" if schema else f"the search_path ({self._search_path()})"
            raise ExportSchemaError(
                f"Table {spec.table!r} does not exist in database {self.database!r} ({where}). Fix: create it, or "
                f"set {spec.table_variable} to the table to export (schema.table when it is not in the search_path)."
            )
        oid, schema, name, relkind = row
        if relkind not in ("r", "p", "v", "m", "f"):
            raise ExportSchemaError(
                f"{schema}.{name} is not a table or view (relkind {relkind!r}); check {spec.table_variable}"
            )
        available = self.conn.execute(
            """SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
               WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum""",
            (oid,),
        ).fetchall()
        by_name = {n: Column(n, t) for n, t in available}
        listing = ", ".join(by_name) or "(none)"
        if spec.columns is None:
            columns = tuple(by_name.values())
        else:
            missing = [c for c in spec.columns if c not in by_name]
            if missing:
                plural = "s" if len(missing) > 1 else ""
                raise ExportSchemaError(
                    f"Column{plural} {', '.join(repr(c) for c in missing)} of {spec.columns_variable} "
                    f"do{'' if plural else 'es'} not exist in {schema}.{name} (its columns: {listing}). "
                    f"Fix: set {spec.columns_variable} to columns that exist (comma-separated), or restore the column."
                )
            columns = tuple(by_name[c] for c in spec.columns)
        if not columns:
            raise ExportSchemaError(f"{schema}.{name} has no columns to export")
        time_column, indexed = None, False
        if spec.time_column is not None:
            time_column = by_name.get(spec.time_column)
            if time_column is None:
                raise ExportSchemaError(
                    f"Time column {spec.time_column!r} ({spec.time_column_variable}) does not exist in {schema}.{name} "
                    f"(its columns: {listing}). Fix: set {spec.time_column_variable} to the column that dates each row."
                )
            if time_column.type not in TIME_TYPES:
                raise ExportSchemaError(
                    f"Time column {schema}.{name}.{time_column.name} is {time_column.type}, not a timestamp or date; "
                    f"daily partitions need one. Fix: set {spec.time_column_variable} to a timestamptz column."
                )
            indexed = bool(
                self.conn.execute(
                    """SELECT 1 FROM pg_index i
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                       WHERE i.indrelid = %s AND a.attname = %s LIMIT 1""",
                    (oid, time_column.name),
                ).fetchone()
            )
        return ResolvedTable(schema, name, columns, time_column, indexed)

    def _search_path(self) -> str:
        return self.conn.execute("SELECT current_setting('search_path')").fetchone()[0]

    # -- data

    def _where(self, table: ResolvedTable, window: Window) -> sql.Composable:
        if table.time_column is None or window.start is None or window.end is None:
            return sql.SQL("")
        col = sql.Identifier(table.time_column.name)
        return sql.SQL(" WHERE {col} >= {start} AND {col} < {end}").format(
            col=col, start=sql.Literal(window.start), end=sql.Literal(window.end)
        )

    def count(self, table: ResolvedTable, window: Window) -> int:
        query = sql.SQL("SELECT count(*) FROM {}").format(table.identifier) + self._where(table, window)
        return self.conn.execute(query).fetchone()[0]

    def copy_statement(self, table: ResolvedTable, window: Window, fmt: Format) -> sql.Composed:
        if fmt == "csv":  # the raw values, exactly what `COPY ... TO STDOUT WITH CSV HEADER` writes
            select = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
            inner = sql.SQL("SELECT {} FROM {}").format(select, table.identifier) + self._where(table, window)
            return sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(inner)
        select = sql.SQL(", ").join(_json_select_item(c) for c in table.columns)
        inner = sql.SQL("SELECT {} FROM {}").format(select, table.identifier) + self._where(table, window)
        return sql.SQL("COPY (SELECT row_to_json(t) FROM ({}) t) TO STDOUT {}").format(inner, _JSON_PASSTHROUGH)


def _json_select_item(column: Column) -> sql.Composable:
    """How a column enters row_to_json. Two types need help to keep one valid object per line with offsets:
    `json` is embedded verbatim (its own newlines included), so it goes through jsonb; a timestamp without
    time zone would print without an offset, so it is read as UTC."""
    ident = sql.Identifier(column.name)
    if column.type == "json":
        return sql.SQL("{}::jsonb AS {}").format(ident, ident)
    if column.type == "json[]":
        return sql.SQL("{}::jsonb[] AS {}").format(ident, ident)
    if column.type == "timestamp without time zone":
        return sql.SQL("({} AT TIME ZONE 'UTC') AS {}").format(ident, ident)
    return ident


class _CopySource:
    """`read(n)` over a psycopg COPY: the server sends one message per row; this hands the pipeline
    chunks of about `n` bytes (joined once), so nothing larger than one chunk is ever held."""

    def __init__(self, copy: psycopg.Copy):
        self._read = copy.read

    def read(self, n: int = MiB) -> bytes:
        rows, size, read = [], 0, self._read
        while size < n:
            data = read()
            if not data:
                break
            rows.append(data)
            size += len(data)
        return b"".join(rows)


# ---------------------------------------------------------------------------------------------- export


def export_partitions(
    conn: PgConnection,
    storage: Storage,
    spec: ExportSpec,
    *,
    series: str,
    windows: Sequence[Window],
    settings: ExportSettings = ExportSettings(),
    encryption: EncryptionStage | None = None,
    encryption_info: dict | None = None,
    extra: dict | None = None,
    on_progress: Callable[[str, Progress], None] | None = None,
    on_resolved: Callable[[ResolvedTable], None] | None = None,
    on_partition: Callable[[Manifest], None] | None = None,
) -> list[Manifest]:
    """Export every window of `spec` in ONE snapshot; each gets its object and then its manifest (last).

    Fails before writing anything when the table or a column is missing (ExportSchemaError). A window with
    no rows gives a valid empty export. On a failure partway, partitions already finished keep their new
    manifest, the failing one is aborted (nothing partial stays), and later ones keep their old export.
    """
    if not windows:
        return []
    if not 0 <= settings.gzip_level <= 9:
        raise ConfigurationError("EXPORT_GZIP_LEVEL", f"{settings.gzip_level} is out of range", "use 1..9 (6 default)")
    started_at = utc_now()
    storage.check_writable()
    done: list[Manifest] = []
    # Committing an object (fsync, or completing a multipart upload) and writing its manifest happen on one
    # finisher thread while the next window streams; manifests still land in order, each after its object.
    finisher = ThreadPoolExecutor(1, thread_name_prefix="export-finish")
    pending: Future[Manifest] | None = None

    def collect() -> None:
        nonlocal pending
        if pending is not None:
            manifest, pending = pending.result(), None
            done.append(manifest)
            if on_partition:
                on_partition(manifest)

    try:
        with ExportSession(conn) as session:
            table = session.resolve(spec)
            if on_resolved:
                on_resolved(table)
            for window in windows:
                finish = _stream_one(
                    conn, session, storage, spec, table, window, series, settings, encryption,
                    encryption_info, extra, started_at, on_progress,
                )  # fmt: skip
                collect()
                pending = finisher.submit(finish)
            collect()
    except BackupError as exc:
        if pending is not None:  # the previous window's commit: let it finish (or fail) before reporting
            try:
                collect()
            except BackupError:
                pass
        if done:
            raise type(exc)(f"{exc} (partitions already exported in this run: {_keys(done)})") from None
        raise
    finally:
        finisher.shutdown(wait=True)
    return done


def _keys(manifests: Sequence[Manifest]) -> str:
    keys = [m.partition for m in manifests]
    return ", ".join(keys) if len(keys) <= 4 else f"{keys[0]} .. {keys[-1]} ({len(keys)})"


def _stream_one(
    conn: PgConnection,
    session: ExportSession,
    storage: Storage,
    spec: ExportSpec,
    table: ResolvedTable,
    window: Window,
    series: str,
    settings: ExportSettings,
    encryption: EncryptionStage | None,
    encryption_info: dict | None,
    extra: dict | None,
    run_started_at: datetime,
    on_progress: Callable[[str, Progress], None] | None,
) -> Callable[[], Manifest]:
    """COPY one window into an uncommitted upload; returns the step that commits it and writes its manifest
    (run on the finisher thread while the next window streams)."""
    t0 = time.monotonic()
    suffix = f"{spec.extension}.age" if encryption else spec.extension  # age: `age -d` first, then zcat
    key = f"{partition_prefix(series, window.key)}/{data_object_name(safe_name(table.name), window.key, '.' + suffix)}"
    statement = session.copy_statement(table, window, spec.fmt)
    statement_text = statement.as_string(session.conn)
    try:
        source_rows = session.count(table, window)
    except psycopg.Error as exc:
        raise BackupError(
            f"Counting {table.qualified} for {window.key} failed: {conn.redact(str(exc)).strip()}"
        ) from None
    writer = storage.open_write(key)
    try:
        with session.conn.cursor() as cur:
            with cur.copy(statement) as copy:
                stats = stream_to_writer(
                    _CopySource(copy),  # type: ignore[arg-type]
                    writer,
                    codec="gzip",
                    level=settings.gzip_level,
                    threads=settings.gzip_threads,
                    encryption=encryption,
                    count_lines=True,
                    read_ahead=4,  # receive rows while the previous chunk is compressed
                    on_progress=(lambda p: on_progress(window.key, p)) if on_progress else None,
                    progress_every=settings.progress_every,
                )
            records = cur.rowcount
        export_seconds = time.monotonic() - t0
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, psycopg.Error):
            # The transaction is unusable after a server error; say what failed, where nothing stayed.
            raise BackupError(
                f"COPY of {table.qualified} for {window.key} failed: {conn.redact(str(exc)).strip()}. "
                f"Nothing was written to {storage.uri(key)}"
            ) from None
        if isinstance(exc, Exception) and not isinstance(exc, BackupError):
            raise write_error_type(exc)(
                f"Writing {storage.uri(key)} failed ({type(exc).__name__}: {conn.redact(str(exc))}); "
                "the partial upload was removed and the previous export of this partition is untouched."
                + write_error_hint(exc)
            ) from exc
        raise

    def finish() -> Manifest:
        try:
            writer.commit()
        except BaseException as exc:
            writer.abort()
            if isinstance(exc, Exception):
                raise write_error_type(exc)(
                    f"Committing {storage.uri(key)} failed ({type(exc).__name__}: {conn.redact(str(exc))}); "
                    "the previous export of this partition is untouched." + write_error_hint(exc)
                ) from exc
            raise
        finished_at = utc_now()
        columns = [c.to_json() for c in table.columns]
        fmt_text = (
            "JSON Lines: one row_to_json object per line (UTF-8, timestamps ISO 8601 with offset, jsonb nested), gzip"
            if spec.fmt == "jsonl"
            else "CSV with a header row (COPY ... TO STDOUT WITH CSV HEADER; UTF-8), gzip"
        )
        manifest = Manifest(
            {
                "format_version": 1,
                "kind": f"table-export-{spec.fmt}",
                "partition": window.key,
                "series": series,
                "artifact": {
                    "key": key,
                    "uri": storage.uri(key),
                    "format": fmt_text,
                    "media_type": "application/x-ndjson" if spec.fmt == "jsonl" else "text/csv",
                    "read_hint": ("age -d -i <identity file> <file> | " if encryption else "")
                    + (
                        "zcat <file> | jq -c .   or   pandas.read_json(<file>, lines=True)"
                        if spec.fmt == "jsonl"
                        else "zcat <file>   or   pandas.read_csv(<file>)"
                    ),
                    "compression": {"codec": "gzip", "level": settings.gzip_level},
                    "encryption": encryption_info if encryption else None,
                    "raw_bytes": stats.raw_bytes,
                    "raw_sha256": stats.raw_sha256,
                    "stored_bytes": stats.stored_bytes,
                    "stored_sha256": stats.stored_sha256,
                    "lines": stats.raw_lines,
                },
                "source": {
                    "url": conn.display(),
                    "host": conn.host,
                    "port": conn.port,
                    "database": conn.dbname,
                    "user": conn.user,
                    "server_version": session.server_version,
                    "table": table.qualified,
                    "statement": statement_text,
                },
                "contents": {
                    "table": table.qualified,
                    "columns": columns,
                    "records": records,  # rows COPY sent (its command tag)
                    "source_rows": source_rows,  # count(*) of the same rows in the same snapshot
                    "tables": {table.qualified: source_rows},
                    "window": (
                        {"column": table.time_column.name, "start": iso(window.start), "end": iso(window.end)}
                        if table.time_column is not None and window.start is not None and window.end is not None
                        else None
                    ),
                },
                "tools": {
                    "cidadao_backup_dagster": __version__,
                    "psycopg": psycopg.__version__,
                    "zlib": zlib.ZLIB_RUNTIME_VERSION,
                    "python": platform.python_version(),
                    "host": socket.gethostname(),
                },
                "timings": {
                    "started_at": iso(run_started_at),
                    "snapshot_at": iso(session.taken_at),
                    "finished_at": iso(finished_at),
                    "export_seconds": round(export_seconds, 3),
                    "total_seconds": round(time.monotonic() - t0, 3),
                    "raw_mb_per_s": round(stats.raw_bytes / MiB / max(export_seconds, 1e-9), 2),
                },
                **({"run": extra} if extra else {}),
            }
        )
        return publish(storage, series, manifest)  # LAST: from here on the export exists for readers

    return finish


# --------------------------------------------------------------------------------------------- reading


@dataclass
class ExportInspection:
    """What re-reading a stored export found. `problems` empty = it matches its manifest."""

    problems: list[str] = field(default_factory=list)
    stored_bytes: int = 0
    raw_bytes: int = 0
    lines: int = 0
    records: int | None = None  # None when the content could not be decoded to its end
    header: list[str] | None = None  # CSV only
    shallow: bool = False  # encrypted and no identity given: only the stored bytes were checked

    @property
    def ok(self) -> bool:
        return not self.problems


class _InflatingReader(io.RawIOBase):
    """Reads a stored gzip object (age-decrypting it first when given identities), hashing the stored and
    the inflated bytes on the way. zlib checks the gzip trailer (CRC-32 and length) at the member's end."""

    def __init__(self, f: Any, identities: list | None = None):
        self._stored = HashingReader(f)
        self._decrypt = DecryptingReader(self._stored, identities) if identities else None
        self._compressed = self._decrypt or self._stored
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.raw_sha = hashlib.sha256()
        self.raw_bytes = 0
        self._pending = b""
        self.error: str | None = None
        self.trailing = False
        self._eof = False

    @property
    def stored_sha(self) -> Any:
        return self._stored.sha

    @property
    def stored_bytes(self) -> int:
        return self._stored.count

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self._pending and not self._eof:
            try:
                chunk = self._compressed.read(MiB)
            except BackupError as exc:  # decryption: wrong key, truncated or altered
                self.error, self._eof = str(exc), True
                return
            if not chunk:
                self._eof = True
                if self.error is None:
                    self._take(self._inflate.flush())
                return
            if self.error is not None:
                continue
            if self._inflate.eof:
                self.trailing = True
                continue
            try:
                self._take(self._inflate.decompress(chunk))
            except zlib.error as exc:
                self.error = f"gzip stream does not decode: {exc}"
            if self._inflate.eof and self._inflate.unused_data:
                self.trailing = True

    def _take(self, data: bytes) -> None:
        if data:
            self.raw_sha.update(data)
            self.raw_bytes += len(data)
            self._pending = data

    def readinto(self, b: Any) -> int:
        self._fill()
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def drain(self) -> None:
        """Hash the rest of the stored object (after a reader stopped early, e.g. on a decode error)."""
        if self._decrypt is not None:
            self._decrypt.close()
        while self._stored.read(MiB):
            pass

    @property
    def complete(self) -> bool:
        return self.error is None and self._inflate.eof


def inspect_export(
    storage: Storage, manifest: Manifest, *, parse: bool = True, identities: list | None = None
) -> ExportInspection:
    """Re-read every byte of an export: size and SHA-256 of the object, the gzip stream to its end (CRC),
    the inflated bytes' size and SHA-256, the line count, and the records: JSON Lines parse line by line
    into objects with the manifest's columns (`parse=False` only counts lines); CSV parses as CSV with
    the manifest's header. An age-encrypted export is decrypted with `identities`; without them only its
    stored size and SHA-256 are checked (`shallow`)."""
    result = ExportInspection()
    key = manifest.artifact_key
    size = storage.size(key)
    if size is None:
        result.problems.append(f"object {storage.uri(key)} is missing")
        return result
    if size != manifest.stored_bytes:
        result.problems.append(f"object holds {size:,} bytes, the manifest says {manifest.stored_bytes:,}")
    art = manifest.data["artifact"]
    contents = manifest.data.get("contents", {})
    columns = [c["name"] for c in contents.get("columns", [])]
    is_csv = manifest.data.get("kind", "").endswith("csv") or ".csv.gz" in key
    if art.get("encryption") and not identities:
        with storage.open_read(key) as f:
            stored = HashingReader(f)
            while stored.read(MiB):
                pass
        result.stored_bytes, result.shallow = stored.count, True
        if stored.sha.hexdigest() != manifest.stored_sha256:
            result.problems.append("SHA-256 of the stored object does not match the manifest")
        return result
    with storage.open_read(key) as f:
        raw = _InflatingReader(f, identities if art.get("encryption") else None)
        counter = _NewlineCounter(raw)
        try:
            if is_csv:
                records, result.header, problem = _read_csv(counter, columns)
            else:
                records, problem = _read_jsonl(counter, columns, parse)
        except UnicodeDecodeError as exc:
            records, problem = None, f"content is not UTF-8 ({exc.reason} at byte {exc.start})"
        raw.drain()
    result.stored_bytes, result.raw_bytes = raw.stored_bytes, raw.raw_bytes
    if raw.stored_sha.hexdigest() != manifest.stored_sha256:
        result.problems.append("SHA-256 of the stored object does not match the manifest")
    if raw.error:
        result.problems.append(raw.error)
    elif not raw.complete:
        result.problems.append("gzip stream ends before its end-of-member trailer (truncated object)")
    elif raw.trailing:
        result.problems.append("data follows the gzip member (the export is written as one member)")
    elif raw.raw_sha.hexdigest() != art.get("raw_sha256") or raw.raw_bytes != art.get("raw_bytes"):
        result.problems.append("inflated content does not match the manifest's raw size/SHA-256")
    if raw.error or not raw.complete:
        return result
    result.lines = counter.lines
    if art.get("lines") is not None and result.lines != art["lines"]:
        result.problems.append(f"{result.lines:,} lines, the manifest says {art['lines']:,}")
    if problem:
        result.problems.append(problem)
        return result
    result.records = records
    if contents.get("records") is not None and records != contents["records"]:
        result.problems.append(f"{records:,} records, the manifest says {contents['records']:,}")
    return result


class _NewlineCounter(io.RawIOBase):
    """Counts newline bytes of whatever passes through (JSON Lines: one per record; CSV: also those
    inside quoted fields, which is why CSV records are counted by parsing)."""

    def __init__(self, inner: io.RawIOBase):
        self._inner = inner
        self.lines = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._inner.readinto(b)
        if n:
            self.lines += memoryview(b)[:n].tobytes().count(b"\n")
        return n


def _read_jsonl(source: io.RawIOBase, columns: list[str], parse: bool) -> tuple[int | None, str | None]:
    expected = set(columns)
    records = 0
    problem = None
    carry = b""
    reader = io.BufferedReader(source, MiB)
    while chunk := reader.read(MiB):
        parts = (carry + chunk).split(b"\n")
        carry = parts.pop()
        records += len(parts)
        if parse and problem is None:
            for offset, line in enumerate(parts):
                problem = _check_json_line(line, records - len(parts) + offset + 1, expected)
                if problem:
                    break
    if carry:  # row_to_json output ends every row with a newline: a tail without one was cut off
        problem = problem or f"line {records + 1} does not end with a newline (truncated record)"
    return (None if problem else records), problem


def _check_json_line(line: bytes, number: int, expected: set[str]) -> str | None:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return f"line {number} is not JSON ({exc})"
    if not isinstance(obj, dict):
        return f"line {number} is a JSON {type(obj).__name__}, not an object"
    if expected and set(obj) != expected:
        diff = sorted(set(obj) ^ expected)
        return f"line {number} has keys that differ from the manifest's columns: {', '.join(diff)}"
    return None


def _read_csv(source: io.RawIOBase, columns: list[str]) -> tuple[int | None, list[str] | None, str | None]:
    text = io.TextIOWrapper(io.BufferedReader(source, MiB), encoding="utf-8", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if header is None:
            return None, None, "the CSV is empty: no header row"
        records = sum(1 for _ in reader)
    except csv.Error as exc:
        return None, None, f"not valid CSV (line {reader.line_num}): {exc}"
    if columns and header != columns:
        return None, header, f"CSV header {header} differs from the manifest's columns {columns}"
    return records, header, None


# ---------------------------------------------------------------------------------------------- health


def row_count_verdict(manifest: Manifest, inspection: ExportInspection) -> Verdict:
    """The records in the stored export against the source's exact count for the partition, taken in the
    export's own snapshot."""
    contents = manifest.data.get("contents", {})
    source_rows = contents.get("source_rows")
    meta: dict[str, Any] = {"source_rows": source_rows, "records_in_file": inspection.records}
    if source_rows is None:
        return Verdict(False, "The manifest records no source row count", meta)
    note = ""
    if inspection.shallow and inspection.ok:  # encrypted, no identity here: the count the export made
        inspection = ExportInspection(records=contents.get("records"))
        meta["records_in_file"] = inspection.records
        note = " (counted while exporting; set BACKUP_AGE_IDENTITY_FILE to recount from the encrypted file)"
    if inspection.records is None:
        problems = "; ".join(inspection.problems) or "unreadable"
        return Verdict(False, f"Records in the export cannot be counted: {problems}", meta)
    diff = inspection.records - source_rows
    meta["difference"] = diff
    table = contents.get("table", "the table")
    if diff < 0:
        return Verdict(
            False,
            f"{-diff:,} row{'s' if diff != -1 else ''} missing: the export holds {inspection.records:,} records, "
            f"{table} had {source_rows:,} for {manifest.partition} at export time{note}",
            meta,
        )
    if diff > 0:
        return Verdict(
            False,
            f"{diff:,} extra record{'s' if diff != 1 else ''}: the export holds {inspection.records:,}, "
            f"{table} had {source_rows:,} for {manifest.partition} at export time{note}",
            meta,
        )
    return Verdict(True, f"{inspection.records:,} records = the source's {source_rows:,} at export time{note}", meta)


def schema_drift(previous: list[dict[str, str]], current: list[dict[str, str]]) -> list[str]:
    """Human-readable changes from `previous` columns to `current` ones: added, dropped, retyped."""
    before = {c["name"]: c["type"] for c in previous}
    after = {c["name"]: c["type"] for c in current}
    changes = [f"column {n!r} added ({t})" for n, t in after.items() if n not in before]
    changes += [f"column {n!r} dropped (was {t})" for n, t in before.items() if n not in after]
    changes += [f"column {n!r} retyped {before[n]} -> {t}" for n, t in after.items() if n in before and before[n] != t]
    return changes


def drift_verdict(current: Manifest, previous: Manifest | None) -> Verdict:
    columns = current.data.get("contents", {}).get("columns", [])
    meta: dict[str, Any] = {"columns": len(columns)}
    if previous is None:
        return Verdict(True, "No earlier export to compare the columns with yet", meta)
    meta["compared_with"] = previous.partition
    changes = schema_drift(previous.data.get("contents", {}).get("columns", []), columns)
    meta["changes"] = changes
    if changes:
        return Verdict(False, f"Schema changed since {previous.partition}: {'; '.join(changes)}", meta)
    return Verdict(True, f"Same {len(columns)} columns and types as {previous.partition}", meta)


def export_freshness(
    valid: list[Manifest], now: datetime, warn_after: timedelta, error_after: timedelta
) -> tuple[Verdict, Literal["WARN", "ERROR"]]:
    """Two thresholds over the newest partition's snapshot time (backfilling an old day does not count):
    past `warn_after` a WARN, past `error_after` an ERROR (no exports at all is an ERROR)."""
    verdict = freshness_verdict(valid, now, warn_after)
    text = verdict.description.replace("backup", "export")
    meta = {**verdict.metadata, "warn_after_hours": warn_after.total_seconds() / 3600}
    meta["error_after_hours"] = error_after.total_seconds() / 3600
    meta.pop("max_age_hours", None)
    if verdict.passed:
        return Verdict(True, text, meta), "WARN"
    if not valid or not freshness_verdict(valid, now, error_after).passed:
        limit = f" ({error_after.total_seconds() / 3600:g} h)" if valid else ""
        return Verdict(False, text + limit, meta), "ERROR"
    return Verdict(False, f"{text} ({warn_after.total_seconds() / 3600:g} h)", meta), "WARN"


def iter_days(start: datetime, end: datetime) -> Iterator[Window]:
    """Daily UTC windows [start, end)."""
    day = start
    while day < end:
        nxt = day + timedelta(days=1)
        yield Window(day.strftime("%Y-%m-%d"), day, nxt)
        day = nxt
