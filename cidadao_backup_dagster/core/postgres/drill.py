"""Restore drills: a backup that was never restored does not count. Each drill restores the newest valid
backup into a scratch database, proves it (SHA-256, pg_restore, exact row counts), times it against the
RTO, drops the scratch database, and writes a report beside the backups so the proof outlives Dagster."""

from __future__ import annotations

from ..artifacts.drills import DrillReports
from ..artifacts.manifest import iso, utc_now
from ..artifacts.storage import Storage
from ..errors import BackupError
from ..protection.scratch import DRILL_PREFIX, create_scratch_database, scratch_name
from .client import PgConnection, restore_client
from .restore import Logger, drop_database, restore_backup, select_backup

RTO_DATABASE_CORRUPTION_S = 30 * 60  # strategy: "Database corruption < 30 minutes"
REPORTS = DrillReports(
    "postgres",
    "restore drill",
    noun="backup",
    rto_s=RTO_DATABASE_CORRUPTION_S,
    rto_name="database corruption",
    passes_when="the drill restored the backup and every table's row count matched its manifest",
)
read_report = REPORTS.read_report
newest_passing_report = REPORTS.newest_passing_report


def run_drill(
    storage: Storage,
    series: str,
    server: PgConnection,
    *,
    source: str,
    partition: str,
    say: Logger = print,
    **options,
) -> dict:
    """Run one drill and store its report (also on failure, when a backup was found to prove). `options` are
    restore_backup's (jobs, tmp_dir, bin_dir, identities); the scratch database is restored with no_owner."""
    started = utc_now()
    manifest = select_backup(storage, series, "latest")  # raises when there is nothing to drill
    # refused before the scratch database exists
    options["bin_dir"] = restore_client(manifest, options.get("bin_dir")).bin_dir
    scratch = scratch_name(DRILL_PREFIX, source)
    report: dict = {
        "kind": "postgres-restore-drill",
        "partition": partition,
        "backup_partition": manifest.partition,
        "backup_uri": storage.uri(manifest.artifact_key),
        "backup_sha256": manifest.stored_sha256,
        "backup_snapshot_at": manifest.timings.snapshot_at,
        "scratch_database": server.with_dbname(scratch).display(),
        "rto_seconds": RTO_DATABASE_CORRUPTION_S,
        "started_at": iso(started),
    }
    try:
        # Created and labelled here (restore_backup accepts an empty target) so that, if this process is
        # killed, the sweeper can tell whose it was and how old it is.
        create_scratch_database(server, scratch)
        say(f"Drill: scratch database {server.with_dbname(scratch).display()} created")
        result = restore_backup(storage, manifest, server, scratch, no_owner=True, say=say, **options)
        report.update(
            passed=result.ok,
            problems=result.mismatches,
            tables=result.tables,
            rows=result.rows,
            duration_seconds=result.total_seconds,
            fetch_seconds=result.fetch_seconds,
            restore_seconds=result.restore_seconds,
            verify_seconds=result.verify_seconds,
        )
    except BackupError as exc:
        report.update(passed=False, problems=[str(exc)], duration_seconds=(utc_now() - started).total_seconds())
    finally:
        drop_database(server, scratch)
    report["finished_at"] = iso(utc_now())
    REPORTS.write_report(storage, source, partition, report)
    return report
