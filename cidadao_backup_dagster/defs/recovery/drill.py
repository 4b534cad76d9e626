"""The monthly restore drill: proves the newest daily backup restores, and how long it takes (the RTO)."""

import warnings

import dagster as dg

from ...core.errors import BackupError, ConfigurationError
from ...core.pg_backup import safe_name
from ...core.pg_drill import RTO_DATABASE_CORRUPTION_S, newest_passing_report, read_report, run_drill
from ..audit import audit_storage, audited
from ..drill_results import duration_result, recency_result
from ..postgres.assets import DAILY_SPEC, series_for
from ..resources import BackupEncryption, BackupStorage, PostgresSource, RecoverySettings

warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")

MONTHLY = dg.MonthlyPartitionsDefinition(start_date="2025-02-01", timezone="UTC")


def _source_name(source: PostgresSource) -> str:
    return safe_name(source.connection().dbname)


@dg.asset(
    name="postgres_restore_drill",
    group_name="recovery",
    partitions_def=MONTHLY,
    kinds={"postgres"},
    description="Monthly drill: restores the newest valid daily backup into a scratch database, verifies the SHA-256 "
    "and every table's row count, times it against the 30-minute RTO, drops the scratch database, and stores a "
    "report under drills/ in BACKUP_STORAGE_URL.",
    tags={"cidadao/domain": "recovery"},
)
def postgres_restore_drill(
    context: dg.AssetExecutionContext,
    postgres_source: PostgresSource,
    backup_storage: BackupStorage,
    recovery: RecoverySettings,
    encryption: BackupEncryption,
) -> dg.MaterializeResult:
    with audited(context, audit_storage(backup_storage), "drill") as audit:
        report = _drill(context, postgres_source, backup_storage, recovery, encryption)
        audit.update(
            artifact=report["backup_uri"],
            result="ok" if report["passed"] else "failed",
            duration_seconds=report["duration_seconds"],
            problems=report["problems"],
        )
    verdict = "PASSED" if report["passed"] else "FAILED: " + "; ".join(report["problems"])
    context.log.info(f"Drill {verdict} in {report['duration_seconds']:.1f} s, proving {report['backup_uri']}")
    return dg.MaterializeResult(
        metadata={
            "passed": dg.MetadataValue.bool(report["passed"]),
            "proved_backup": dg.MetadataValue.text(report["backup_partition"]),
            "backup_uri": dg.MetadataValue.text(report["backup_uri"]),
            "backup_sha256": dg.MetadataValue.text(report["backup_sha256"]),
            "duration_s": dg.MetadataValue.float(report["duration_seconds"]),
            "rto_s": dg.MetadataValue.int(RTO_DATABASE_CORRUPTION_S),
            "tables": dg.MetadataValue.int(report.get("tables", 0)),
            "rows": dg.MetadataValue.int(report.get("rows", 0)),
        }
    )


def _drill(context, postgres_source, backup_storage, recovery, encryption) -> dict:
    try:
        source = postgres_source.connection()
        server = recovery.server(recovery.drill_server_url, source, "DRILL_DATABASE_URL")
        storage = backup_storage.open()
        return run_drill(
            storage,
            series_for(DAILY_SPEC, postgres_source),
            server,
            source=_source_name(postgres_source),
            partition=context.partition_key,
            jobs=recovery.restore_jobs,
            tmp_dir=recovery.scratch_dir(),
            bin_dir=postgres_source.bin_dir,
            identities=encryption.identities(),
            say=context.log.info,
        )
    except (BackupError, ConfigurationError) as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None


def _report(postgres_source: PostgresSource, backup_storage: BackupStorage, partition: str):
    """(report, None), or (None, a failed check result) when this month has no drill report."""
    report = read_report(backup_storage.open(), _source_name(postgres_source), partition)
    if report is None:
        return None, dg.AssetCheckResult(passed=False, description=f"No drill report for {partition}")
    return report, None


@dg.asset_check(
    asset=postgres_restore_drill,
    name="drill_passed",
    blocking=True,
    partitions_def=MONTHLY,
    description="ERROR unless the drill restored the backup and every table's row count matched its manifest.",
)
def drill_passed(
    context: dg.AssetCheckExecutionContext, postgres_source: PostgresSource, backup_storage: BackupStorage
) -> dg.AssetCheckResult:
    report, missing = _report(postgres_source, backup_storage, context.partition_key)
    if missing:
        return missing
    return dg.AssetCheckResult(
        passed=bool(report["passed"]),
        severity=dg.AssetCheckSeverity.ERROR,
        description=("Restored and verified " if report["passed"] else "Drill failed: " + "; ".join(report["problems"]))
        + f" (backup {report['backup_partition']})",
        metadata={"proved_backup": report["backup_partition"], "backup_uri": report["backup_uri"]},
    )


@dg.asset_check(
    asset=postgres_restore_drill,
    name="drill_duration_within_rto",
    partitions_def=MONTHLY,
    description="Restore time against the RTO for database corruption (30 min): WARN above 15 min, ERROR above 30.",
)
def drill_duration_within_rto(
    context: dg.AssetCheckExecutionContext, postgres_source: PostgresSource, backup_storage: BackupStorage
) -> dg.AssetCheckResult:
    report, missing = _report(postgres_source, backup_storage, context.partition_key)
    if missing:
        return missing
    return duration_result(report, RTO_DATABASE_CORRUPTION_S)


@dg.asset_check(
    asset=postgres_restore_drill,
    name="recent_passing_drill",
    description="ERROR when no drill has passed in the last 35 days: an untested backup is a hope, not a backup.",
)
def recent_passing_drill(postgres_source: PostgresSource, backup_storage: BackupStorage) -> dg.AssetCheckResult:
    report = newest_passing_report(backup_storage.open(), _source_name(postgres_source))
    return recency_result(report, "backup")


postgres_restore_drill_job = dg.define_asset_job(
    "postgres_restore_drill_job",
    selection=dg.AssetSelection.assets(postgres_restore_drill),
    description="Monthly restore drill with its checks.",
)
# On the 1st at 05:00 UTC, the drill of the month that just ended (after the 03:00 daily backup landed).
postgres_restore_drill_schedule = dg.build_schedule_from_partitioned_job(
    postgres_restore_drill_job,
    name="postgres_restore_drill_schedule",
    day_of_month=1,
    hour_of_day=5,
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
