"""One PostgreSQL backup, end to end: snapshot -> pg_dump -> pipeline -> storage -> manifest (last)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import zstandard

from ..artifacts.manifest import Manifest, utc_now
from ..artifacts.pipeline import EncryptionStage, Progress, StreamStats, ZstdSettings
from ..artifacts.publish import NewObject, artifact_entry, data_key, manifest_data, run_timings, tool_versions
from ..artifacts.publish import safe_name as safe_name  # re-exported: defs names series with it
from ..artifacts.storage import ObjectWriter, Storage
from .client import BinDir, ExportedSnapshot, PgClient, PgConnection, PgDumpProcess, choose_client, find_clients

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupSettings(ZstdSettings):
    pg_bin_dir: BinDir = None  # PG_BIN_DIR (one folder) or ClientDirs (PG_BIN_DIRS, searched)


def backup_postgres(
    conn: PgConnection,
    storage: Storage,
    *,
    series: str,
    partition: str,
    settings: BackupSettings = BackupSettings(),
    encryption: EncryptionStage | None = None,
    encryption_info: dict | None = None,
    extra: dict | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> Manifest:
    """Back up `conn` into `storage` under `series/partition`. Returns the manifest, written last.

    On any failure the partial upload is aborted and no manifest is written. Nothing earlier is touched:
    a re-run of the partition adds its own object and manifest beside the earlier backup's.
    """
    started_at = utc_now()
    t0 = time.monotonic()
    storage.check_writable()
    installed = find_clients("pg_dump", settings.pg_bin_dir)  # none at all: fail before connecting
    snapshot = ExportedSnapshot(conn)
    try:
        pg_dump = choose_client(  # refused here, before anything is written
            installed,
            snapshot.server_version_num // 10000,
            f"The server is PostgreSQL {snapshot.server_version}, and pg_dump must be at least its major version",
            settings.pg_bin_dir,
        )
        log.info("Using %s for a PostgreSQL %s server", pg_dump.describe(), snapshot.server_version)
        suffix = ".dump.zst.age" if encryption else ".dump.zst"
        obj = NewObject(
            storage,
            data_key(series, partition, conn.dbname, suffix),
            redact=conn.redact,
            untouched="earlier backups are untouched",
        )
        snapshot.start_counting()
        stats, counts, dump_seconds = obj.write(
            lambda writer: _dump_into(writer, conn, snapshot, pg_dump, settings, encryption, on_progress, t0)
        )
    finally:
        snapshot.close()

    data = _manifest_data(
        obj,
        conn,
        snapshot,
        stats,
        counts,
        series=series,
        partition=partition,
        settings=settings,
        encryption_info=encryption_info if encryption else None,
        encrypted=encryption is not None,
        extra=extra,
        pg_dump=pg_dump,
        started_at=started_at,
        dump_seconds=dump_seconds,
        t0=t0,
    )
    return obj.publish(series, data)


def source_entry(conn: PgConnection, server_version: str, **more: str) -> dict:
    """The manifest's `source` for a PostgreSQL read (no password: `display()` leaves it out)."""
    return {
        "url": conn.display(),
        "host": conn.host,
        "port": conn.port,
        "database": conn.dbname,
        "user": conn.user,
        "server_version": server_version,
        **more,
    }


def _dump_into(
    writer: ObjectWriter,
    conn: PgConnection,
    snapshot: ExportedSnapshot,
    pg_dump: PgClient,
    settings: BackupSettings,
    encryption: EncryptionStage | None,
    on_progress: Callable[[Progress], None] | None,
    t0: float,
) -> tuple[StreamStats, dict[str, int], float]:
    """pg_dump of `snapshot` through the pipeline into `writer`; (stats, row counts, seconds since t0)."""
    dump: PgDumpProcess | None = None
    try:
        dump = PgDumpProcess(conn, snapshot.snapshot_id, bin_dir=pg_dump.bin_dir)
        stats = settings.stream(dump.stdout, writer, encryption, on_progress)  # type: ignore[arg-type]
        dump.wait()  # a non-zero exit raises with pg_dump's own message, before anything is committed
        return stats, snapshot.counts(), time.monotonic() - t0
    except BaseException:
        if dump is not None:
            dump.kill()
        raise


def _manifest_data(
    obj: NewObject,
    conn: PgConnection,
    snapshot: ExportedSnapshot,
    stats: StreamStats,
    counts: dict[str, int],
    *,
    series: str,
    partition: str,
    settings: BackupSettings,
    encryption_info: dict | None,
    encrypted: bool,
    extra: dict | None,
    pg_dump: PgClient,
    started_at: datetime,
    dump_seconds: float,
    t0: float,
) -> dict:
    return manifest_data(
        kind="postgres-dump",
        partition=partition,
        series=series,
        extra=extra,
        artifact=artifact_entry(
            obj,
            stats,
            describe={
                "format": "pg_dump custom archive (uncompressed inside), zstd-compressed",
                "restore_hint": (
                    "age -d -i key.txt <file> | zstd -d -o backup.dump; pg_restore --dbname=<target> backup.dump"
                    if encrypted
                    else "zstd -d <file> -o backup.dump; pg_restore --jobs 4 --dbname=<target> backup.dump"
                ),
            },
            compression=settings.compression,
            encryption=encryption_info,
        ),
        source=source_entry(conn, snapshot.server_version),
        contents={"tables": counts, "table_count": len(counts), "rows_total": sum(counts.values())},
        tools=tool_versions(
            {"pg_dump": pg_dump.version, "pg_dump_path": pg_dump.path}, zstandard=zstandard.__version__
        ),
        timings=run_timings(started_at, snapshot.taken_at, t0, ("dump_seconds", dump_seconds), stats.raw_bytes),
    )
