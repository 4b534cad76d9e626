"""The monthly restore drill: proves the newest daily backup restores, and how long it takes (the RTO)."""

import dagster as dg

from ...core.artifacts.drill_reports import DrillReport
from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.drill import RTO_DATABASE_CORRUPTION_S, newest_passing_report, read_report, run_drill
from ..artifact_checks import DrillSeries, build_drill_checks
from ..audit import audit_storage, audited
from ..failures import failure
from ..postgres.assets import DAILY_SPEC, series_for
from ..resources import PostgresSource
from ..schedules import latest_partition_schedule, source_asset_job
from ..sources import PgBinding

MONTHLY = dg.MonthlyPartitionsDefinition(start_date="2025-02-01", timezone="UTC")


def _source_name(source: PostgresSource) -> str:
    """Drill reports live under the source's stable series name."""
    return source.series_name()


def drill_names(source: PostgresSource) -> tuple[str, str]:
    """The names drill reports were written under: the series name, and the database name used before it."""
    return source.series_name(), source.legacy_series_name()


def _drill(context, binding: PgBinding) -> DrillReport:
    postgres_source: PostgresSource = binding.source(context.resources)
    recovery, encryption = context.resources.recovery, context.resources.encryption
    try:
        source = postgres_source.connection()
        server = recovery.server(recovery.drill_server_url, source, "DRILL_DATABASE_URL")
        storage = binding.storage(context.resources).open()
        report = run_drill(
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
    return DrillReport.parse(report)


def drill_series(binding: PgBinding) -> DrillSeries:
    """How the drill checks read one source's drill reports."""

    def read(resources, partition: str) -> DrillReport | None:
        storage = binding.storage(resources).open()
        return DrillReport.of(read_report(storage, _source_name(binding.source(resources)), partition))

    def newest_passing(resources) -> DrillReport | None:
        storage = binding.storage(resources).open()
        return DrillReport.of(newest_passing_report(storage, drill_names(binding.source(resources))))

    return DrillSeries(
        noun="backup",
        report_name="drill report",
        partitions_def=MONTHLY,
        needs=frozenset({binding.source_key, binding.storage_key}),
        rto_s=RTO_DATABASE_CORRUPTION_S,
        read_report=read,
        newest_passing=newest_passing,
        descriptions={
            "drill_passed": "ERROR unless the drill restored the backup and every table's row count matched its "
            "manifest.",
            "drill_duration_within_rto": "Restore time against the RTO for database corruption (30 min): WARN above "
            "15 min, ERROR above 30.",
            "recent_passing_drill": "ERROR when no drill has passed in the last 35 days: an untested backup is a "
            "hope, not a backup.",
        },
    )


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
                artifact=report.backup_uri,
                result="ok" if report.passed else "failed",
                duration_seconds=report.duration_seconds,
                problems=list(report.problems),
            )
        verdict = "PASSED" if report.passed else "FAILED: " + "; ".join(report.problems)
        context.log.info(f"Drill {verdict} in {report.duration_seconds:.1f} s, proving {report.backup_uri}")
        return dg.MaterializeResult(
            metadata={
                "passed": dg.MetadataValue.bool(report.passed),
                "proved_backup": dg.MetadataValue.text(report.backup_partition),
                "backup_uri": dg.MetadataValue.text(report.backup_uri),
                "backup_sha256": dg.MetadataValue.text(report.backup_sha256),
                "duration_s": dg.MetadataValue.float(report.duration_seconds),
                "rto_s": dg.MetadataValue.int(RTO_DATABASE_CORRUPTION_S),
                "tables": dg.MetadataValue.int(report.tables or 0),
                "rows": dg.MetadataValue.int(report.rows or 0),
            }
        )

    checks = build_drill_checks(postgres_restore_drill, drill_series(binding))
    job = source_asset_job(
        binding, "postgres_restore_drill_job", postgres_restore_drill, "Monthly restore drill with its checks."
    )
    # On the 1st at 05:00 UTC (after the 03:00 daily backup landed), the drill of the month that just ended.
    schedule = latest_partition_schedule(
        binding.named("postgres_restore_drill_schedule"), job, MONTHLY, "0 5 1 * *", "Monthly restore drill."
    )
    return postgres_restore_drill, checks, job, schedule
