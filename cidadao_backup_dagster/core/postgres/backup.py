"""One PostgreSQL backup, end to end: snapshot -> pg_dump -> pipeline -> storage -> manifest (last)."""

from __future__ import annotations

import logging
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from ... import __version__
from ..artifacts.manifest import Manifest, data_object_name, iso, partition_prefix, publish, utc_now
from ..artifacts.pipeline import EncryptionStage, Progress, stream_to_writer
from ..artifacts.storage import MiB, Storage, write_error_hint, write_error_type
from ..errors import BackupError
from .client import BinDir, ExportedSnapshot, PgConnection, PgDumpProcess, choose_client, find_clients

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupSettings:
    zstd_level: int = 3
    zstd_threads: int = -1
    pg_bin_dir: BinDir = None  # PG_BIN_DIR (one folder) or ClientDirs (PG_BIN_DIRS, searched)
    progress_every: float = 10.0


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


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
        # A name of this run's own: a re-run or a concurrent run of the partition never replaces this object.
        suffix = ".dump.zst.age" if encryption else ".dump.zst"
        key = f"{partition_prefix(series, partition)}/{data_object_name(safe_name(conn.dbname), partition, suffix)}"
        snapshot.start_counting()
        writer = storage.open_write(key)
        dump: PgDumpProcess | None = None
        try:
            dump = PgDumpProcess(conn, snapshot.snapshot_id, bin_dir=pg_dump.bin_dir)
            stats = stream_to_writer(
                dump.stdout,  # type: ignore[arg-type]
                writer,
                level=settings.zstd_level,
                threads=settings.zstd_threads,
                encryption=encryption,
                on_progress=on_progress,
                progress_every=settings.progress_every,
            )
            dump.wait()  # a non-zero exit raises with pg_dump's own message, before anything is committed
            counts = snapshot.counts()
            dump_seconds = time.monotonic() - t0
            writer.commit()
        except BaseException as exc:
            if dump is not None:
                dump.kill()
            writer.abort()
            if isinstance(exc, Exception) and not isinstance(exc, BackupError):
                # Storage and driver errors arrive as botocore/OS exceptions: say where and that nothing stayed.
                raise write_error_type(exc)(
                    f"Writing {storage.uri(key)} failed ({type(exc).__name__}: {conn.redact(str(exc))}); "
                    "the partial upload was removed and earlier backups are untouched." + write_error_hint(exc)
                ) from exc
            raise
    finally:
        snapshot.close()

    finished_at = utc_now()
    manifest = Manifest(
        {
            "format_version": 1,
            "kind": "postgres-dump",
            "partition": partition,
            "series": series,
            "artifact": {
                "key": key,
                "uri": storage.uri(key),
                "format": "pg_dump custom archive (uncompressed inside), zstd-compressed",
                "restore_hint": (
                    "age -d -i key.txt <file> | zstd -d -o backup.dump; pg_restore --dbname=<target> backup.dump"
                    if encryption
                    else "zstd -d <file> -o backup.dump; pg_restore --jobs 4 --dbname=<target> backup.dump"
                ),
                "compression": {"codec": "zstd", "level": settings.zstd_level, "checksum": True},
                "encryption": encryption_info if encryption else None,
                "raw_bytes": stats.raw_bytes,
                "raw_sha256": stats.raw_sha256,
                "stored_bytes": stats.stored_bytes,
                "stored_sha256": stats.stored_sha256,
            },
            "source": {
                "url": conn.display(),
                "host": conn.host,
                "port": conn.port,
                "database": conn.dbname,
                "user": conn.user,
                "server_version": snapshot.server_version,
            },
            "contents": {
                "tables": counts,
                "table_count": len(counts),
                "rows_total": sum(counts.values()),
            },
            "tools": {
                "pg_dump": pg_dump.version,
                "pg_dump_path": pg_dump.path,
                "cidadao_backup_dagster": __version__,
                "zstandard": zstandard.__version__,
                "python": platform.python_version(),
                "host": socket.gethostname(),
            },
            "timings": {
                "started_at": iso(started_at),
                "snapshot_at": iso(snapshot.taken_at),
                "finished_at": iso(finished_at),
                "dump_seconds": round(dump_seconds, 3),
                "total_seconds": round(time.monotonic() - t0, 3),
                "raw_mb_per_s": round(stats.raw_bytes / MiB / max(dump_seconds, 1e-9), 2),
            },
            **({"run": extra} if extra else {}),
        }
    )
    return publish(storage, series, manifest)  # LAST: from here on the backup exists for readers
