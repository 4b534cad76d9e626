"""Critical data exports: tables as gzip JSON Lines or gzip CSV, streamed out of PostgreSQL with COPY.

The strategy's "Critical Data Exports" made safe to run unattended and to read back:

- `investigations` -> one gzip JSON Lines object per UTC day of `created_at` (a `row_to_json` object per
  line, timestamps ISO 8601 with offset, jsonb nested); the strategy's "last 7 days" is the union of the
  last seven partitions.
- `agent_instances` -> a weekly full snapshot as gzip CSV with a header (`COPY ... TO STDOUT WITH CSV HEADER`).

Each partition goes through the backups' path (artifacts/publish.py): COPY -> SHA-256 (raw) -> gzip ->
[encryption] -> SHA-256 (stored) -> storage, then its manifest LAST. Rows are never held in memory: the
server streams COPY data, the pipeline handles it in 1 MiB chunks. One REPEATABLE READ transaction covers
every partition of a run, so each partition's exact `count(*)` and its COPY see the same snapshot, and a
backfilled month is one consistent read.

Layout (mirrors the backups):

    exports/<database>/<table>/<cadence>/<partition>/manifest-<written at>-<random>.json
    exports/<database>/<table>/<cadence>/<partition>/<table>_<partition>_<written at>-<random>.jsonl.gz | .csv.gz

What an export reads is in spec.py, the PostgreSQL side in session.py, reading one back in inspect.py, and
its checks in health.py.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from ..artifacts.manifest import Manifest, iso, utc_now
from ..artifacts.pipeline import EncryptionStage, Progress, StreamStats, stream_to_writer
from ..artifacts.publish import NewObject, artifact_entry, data_key, manifest_data, run_timings, tool_versions
from ..artifacts.storage import ObjectWriter, Storage
from ..errors import BackupError, ConfigurationError
from ..postgres.backup import source_entry
from ..postgres.client import PgConnection
from .session import ExportSession, _CopySource
from .spec import ExportSettings, ExportSpec, ResolvedTable, Window

log = logging.getLogger(__name__)
DEFAULT_SETTINGS = ExportSettings()


def export_partitions(
    conn: PgConnection,
    storage: Storage,
    spec: ExportSpec,
    *,
    series: str,
    windows: Sequence[Window],
    settings: ExportSettings = DEFAULT_SETTINGS,
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
            run = _Run(
                conn, session, storage, spec, table, series, settings, encryption, encryption_info, extra,
                started_at, on_progress,
            )  # fmt: skip
            for window in windows:
                finish = _stream_one(run, window)
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


@dataclass(frozen=True)
class _Run:
    """What every window of one export run shares."""

    conn: PgConnection
    session: ExportSession
    storage: Storage
    spec: ExportSpec
    table: ResolvedTable
    series: str
    settings: ExportSettings
    encryption: EncryptionStage | None
    encryption_info: dict | None
    extra: dict | None
    started_at: datetime
    on_progress: Callable[[str, Progress], None] | None


def _stream_one(run: _Run, window: Window) -> Callable[[], Manifest]:
    """COPY one window into an uncommitted upload; returns the step that commits it and writes its manifest
    (run on the finisher thread while the next window streams)."""
    t0 = time.monotonic()
    suffix = f"{run.spec.extension}.age" if run.encryption else run.spec.extension  # age: `age -d` first, then zcat
    obj = NewObject(
        run.storage,
        data_key(run.series, window.key, run.table.name, "." + suffix),
        redact=run.conn.redact,
        untouched="the previous export of this partition is untouched",
    )
    statement = run.session.copy_statement(run.table, window, run.spec.fmt)
    try:
        source_rows = run.session.count(run.table, window)
    except psycopg.Error as exc:
        raise BackupError(
            f"Counting {run.table.qualified} for {window.key} failed: {run.conn.redact(str(exc)).strip()}"
        ) from None
    stats, records = obj.write(lambda writer: _copy(run, window, statement, writer, obj.uri), commit=False)
    export_seconds = time.monotonic() - t0
    counted = {"records": records, "source_rows": source_rows}
    statement_text = statement.as_string(run.session.conn)

    def finish() -> Manifest:
        obj.commit()
        data = _manifest_data(run, window, obj, stats, counted, statement_text, export_seconds, t0)
        return obj.publish(run.series, data)

    return finish


def _copy(
    run: _Run, window: Window, statement: sql.Composed, writer: ObjectWriter, uri: str
) -> tuple[StreamStats, int]:
    """COPY the window through the gzip pipeline into `writer`: (stats, rows COPY sent)."""
    on_progress = run.on_progress
    try:
        with run.session.conn.cursor() as cur:
            with cur.copy(statement) as copy:
                stats = stream_to_writer(
                    _CopySource(copy),  # type: ignore[arg-type]
                    writer,
                    codec="gzip",
                    level=run.settings.gzip_level,
                    threads=run.settings.gzip_threads,
                    encryption=run.encryption,
                    count_lines=True,
                    read_ahead=4,  # receive rows while the previous chunk is compressed
                    on_progress=(lambda p: on_progress(window.key, p)) if on_progress else None,
                    progress_every=run.settings.progress_every,
                )
            return stats, cur.rowcount
    except psycopg.Error as exc:
        # The transaction is unusable after a server error; say what failed, where nothing stayed.
        raise BackupError(
            f"COPY of {run.table.qualified} for {window.key} failed: {run.conn.redact(str(exc)).strip()}. "
            f"Nothing was written to {uri}"
        ) from None


def _manifest_data(
    run: _Run,
    window: Window,
    obj: NewObject,
    stats: StreamStats,
    counted: dict[str, int],
    statement_text: str,
    export_seconds: float,
    t0: float,
) -> dict:
    spec, table, conn = run.spec, run.table, run.conn
    jsonl = spec.fmt == "jsonl"
    describe = {
        "format": "JSON Lines: one row_to_json object per line (UTF-8, timestamps ISO 8601 with offset, jsonb "
        "nested), gzip"
        if jsonl
        else "CSV with a header row (COPY ... TO STDOUT WITH CSV HEADER; UTF-8), gzip",
        "media_type": "application/x-ndjson" if jsonl else "text/csv",
        "read_hint": ("age -d -i <identity file> <file> | " if run.encryption else "")
        + (
            "zcat <file> | jq -c .   or   pandas.read_json(<file>, lines=True)"
            if jsonl
            else "zcat <file>   or   pandas.read_csv(<file>)"
        ),
    }
    artifact = artifact_entry(
        obj,
        stats,
        describe=describe,
        compression={"codec": "gzip", "level": run.settings.gzip_level},
        encryption=run.encryption_info if run.encryption else None,
    )
    return manifest_data(
        kind=f"table-export-{spec.fmt}",
        partition=window.key,
        series=run.series,
        extra=run.extra,
        artifact={**artifact, "lines": stats.raw_lines},
        source=source_entry(conn, run.session.server_version, table=table.qualified, statement=statement_text),
        contents={
            "table": table.qualified,
            "columns": [c.to_json() for c in table.columns],
            "records": counted["records"],  # rows COPY sent (its command tag)
            "source_rows": counted["source_rows"],  # count(*) of the same rows in the same snapshot
            "tables": {table.qualified: counted["source_rows"]},
            "window": (
                {"column": table.time_column.name, "start": iso(window.start), "end": iso(window.end)}
                if table.time_column is not None and window.start is not None and window.end is not None
                else None
            ),
        },
        tools=tool_versions(psycopg=psycopg.__version__, zlib=zlib.ZLIB_RUNTIME_VERSION),
        timings=run_timings(
            run.started_at, run.session.taken_at, t0, ("export_seconds", export_seconds), stats.raw_bytes
        ),
    )
