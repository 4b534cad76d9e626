"""The monthly restore drill: proves the newest daily backup restores, and how long it takes (the RTO)."""

import dagster as dg

from ...core.artifacts.drill_reports import DrillReport
from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.drill import REPORTS, RTO_DATABASE_CORRUPTION_S, run_drill
from ..drills import audited_drill, drill_result
from ..drills import build_drill as build_drill_defs
from ..failures import failure
from ..postgres.assets import DAILY_SPEC, series_for
from ..resources import PostgresSource
from ..sources import PgBinding
from .config import restore_tools

DESCRIPTION = (
    "Monthly drill: restores the newest valid daily backup into a scratch database, verifies the "
    "SHA-256 and every table's row count, times it against the 30-minute RTO, drops the scratch database, and "
    "stores a report under drills/ in BACKUP_STORAGE_URL."
)


def _source_name(source: PostgresSource) -> str:
    """Drill reports live under the source's stable series name."""
    return source.series_name()


def drill_names(source: PostgresSource) -> tuple[str, str]:
    """The names drill reports were written under: the series name, and the database name used before it."""
    return source.series_name(), source.legacy_series_name()


def _drill(context, binding: PgBinding) -> DrillReport:
    postgres_source: PostgresSource = binding.source(context.resources)
    recovery = context.resources.recovery
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
            **restore_tools(context, postgres_source),
        )
    except (BackupError, ConfigurationError) as exc:
        raise failure(exc, allow_retries=False) from None
    return DrillReport.parse(report)


def _restore_drill(context: dg.AssetExecutionContext, binding: PgBinding) -> dg.MaterializeResult:
    report = audited_drill(context, binding, lambda: _drill(context, binding))
    return drill_result(
        context,
        report,
        RTO_DATABASE_CORRUPTION_S,
        proved={"backup_sha256": dg.MetadataValue.text(report.backup_sha256)},
        restored={
            "tables": dg.MetadataValue.int(report.tables or 0),
            "rows": dg.MetadataValue.int(report.rows or 0),
        },
    )


def build_drill(binding: PgBinding):
    """(drill asset, its checks, its job, its schedule) for one PostgreSQL source."""
    # On the 1st at 05:00 UTC (after the 03:00 daily backup landed), the drill of the month that just ended.
    return build_drill_defs(
        binding, "postgres_restore_drill", REPORTS, drill_names, _restore_drill, DESCRIPTION, cron="0 5 1 * *"
    )
