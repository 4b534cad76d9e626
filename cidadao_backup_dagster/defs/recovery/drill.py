"""The monthly restore drill: proves the newest daily backup restores, and how long it takes (the RTO)."""

import warnings

import dagster as dg

from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.drill import RTO_DATABASE_CORRUPTION_S, newest_passing_report, read_report, run_drill
from ..audit import audit_storage, audited
from ..drill_results import duration_result, recency_result
from ..failures import failure
from ..postgres.assets import DAILY_SPEC, series_for
from ..resources import PostgresSource
from ..schedules import latest_partition_schedule, source_asset_job
from ..sources import PgBinding

warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")

MONTHLY = dg.MonthlyPartitionsDefinition(start_date="2025-02-01", timezone="UTC")


def _source_name(source: PostgresSource) -> str:
    """Drill reports live under the source's stable series name."""
    return source.series_name()


def drill_names(source: PostgresSource) -> tuple[str, str]:
    """The names drill reports were written under: the series name, and the database name used before it."""
    return source.series_name(), source.legacy_series_name()


def _drill(context, binding: PgBinding) -> dict:
    postgres_source: PostgresSource = binding.source(context.resources)
    recovery, encryption = context.resources.recovery, context.resources.encryption
    try:
        source = postgres_source.connection()
        server = recovery.server(recovery.drill_server_url, source, "DRILL_DATABASE_URL")
        storage = binding.storage(context.resources).open()
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
        raise failure(exc, allow_retries=False) from None


def _report(binding: PgBinding, resources, partition: str):
    """(report, None), or (None, a failed check result) when this month has no drill report."""
    report = read_report(binding.storage(resources).open(), _source_name(binding.source(resources)), partition)
    if report is None:
        return None, dg.AssetCheckResult(passed=False, description=f"No drill report for {partition}")
    return report, None


def build_drill(binding: PgBinding):
    """(drill asset, its checks, its job, its schedule) for one PostgreSQL source."""
    needs = {binding.source_key, binding.storage_key}

    @dg.asset(
        key=binding.key("postgres_restore_drill"),
        group_name=binding.group("recovery"),
        partitions_def=MONTHLY,
        kinds={"postgres"},
        required_resource_keys={*needs, "recovery", "encryption"},
        description="Monthly drill: restores the newest valid daily backup into a scratch database, verifies the "
        "SHA-256 and every table's row count, times it against the 30-minute RTO, drops the scratch database, and "
        "stores a report under drills/ in BACKUP_STORAGE_URL.",
        tags={"cidadao/domain": "recovery", **binding.tags},
    )
    def postgres_restore_drill(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        with audited(context, audit_storage(binding.storage(context.resources)), "drill") as audit:
            report = _drill(context, binding)
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

    @dg.asset_check(
        asset=postgres_restore_drill,
        name="drill_passed",
        required_resource_keys=needs,
        blocking=True,
        partitions_def=MONTHLY,
        description="ERROR unless the drill restored the backup and every table's row count matched its manifest.",
    )
    def drill_passed(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        report, missing = _report(binding, context.resources, context.partition_key)
        if missing:
            return missing
        return dg.AssetCheckResult(
            passed=bool(report["passed"]),
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                "Restored and verified " if report["passed"] else "Drill failed: " + "; ".join(report["problems"])
            )
            + f" (backup {report['backup_partition']})",
            metadata={"proved_backup": report["backup_partition"], "backup_uri": report["backup_uri"]},
        )

    @dg.asset_check(
        asset=postgres_restore_drill,
        name="drill_duration_within_rto",
        required_resource_keys=needs,
        partitions_def=MONTHLY,
        description="Restore time against the RTO for database corruption (30 min): WARN above 15 min, ERROR above 30.",
    )
    def drill_duration_within_rto(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        report, missing = _report(binding, context.resources, context.partition_key)
        if missing:
            return missing
        return duration_result(report, RTO_DATABASE_CORRUPTION_S)

    @dg.asset_check(
        asset=postgres_restore_drill,
        name="recent_passing_drill",
        required_resource_keys=needs,
        description="ERROR when no drill has passed in the last 35 days: an untested backup is a hope, not a backup.",
    )
    def recent_passing_drill(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        resources = context.resources
        report = newest_passing_report(binding.storage(resources).open(), drill_names(binding.source(resources)))
        return recency_result(report, "backup")

    job = source_asset_job(
        binding, "postgres_restore_drill_job", postgres_restore_drill, "Monthly restore drill with its checks."
    )
    # On the 1st at 05:00 UTC (after the 03:00 daily backup landed), the drill of the month that just ended.
    schedule = latest_partition_schedule(
        binding.named("postgres_restore_drill_schedule"), job, MONTHLY, "0 5 1 * *", "Monthly restore drill."
    )
    return postgres_restore_drill, [drill_passed, drill_duration_within_rto, recent_passing_drill], job, schedule
