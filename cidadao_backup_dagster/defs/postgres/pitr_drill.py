"""The monthly PITR drill of a source with PITR on: base backup + WAL recovered to the newest daily dump's
snapshot instant must hold every table's row count of that dump. Through the shared drill wiring (defs/drills.py):
drill_passed, drill_duration_within_rto and recent_passing_drill apply as to the restore drill."""

import dagster as dg

from ...core.artifacts.drill_reports import DrillReport
from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.pitr.drill import REPORTS, RTO_PITR_S, run_pitr_drill
from ...core.postgres.pitr.recovery import server_search
from ..drills import audited_drill, build_drill, drill_result
from ..failures import failure
from ..sources import PgBinding
from .assets import DAILY_SPEC, series_for

DESCRIPTION = (
    "Monthly PITR drill: recovers the cluster from base backup + WAL to the snapshot instant of the newest daily "
    "dump in a throwaway server, compares every table's exact row count with that dump's manifest (two independent "
    "methods agree), times it against the 30-minute RTO and stores a report under drills/postgres-pitr/ in "
    "BACKUP_STORAGE_URL."
)


def _drill(context, binding: PgBinding) -> DrillReport:
    source, resources = binding.source(context.resources), context.resources
    try:
        report = run_pitr_drill(
            binding.storage(resources).open(), series_for(DAILY_SPEC, source), source=source.series_name(),
            partition=context.partition_key, bin_dir=server_search(source.bin_dir),
            identities=resources.encryption.identities(), tmp_dir=resources.recovery.scratch_dir(),
            say=context.log.info,
        )  # fmt: skip
    except (BackupError, ConfigurationError) as exc:
        raise failure(exc, allow_retries=False) from None
    return DrillReport.parse(report)


def _pitr_drill(context: dg.AssetExecutionContext, binding: PgBinding) -> dg.MaterializeResult:
    report = audited_drill(context, binding, lambda: _drill(context, binding))
    raw = report.raw
    return drill_result(
        context,
        report,
        RTO_PITR_S,
        proved={
            "target_time": dg.MetadataValue.text(raw.get("target_time", "")),
            "dump_partition": dg.MetadataValue.text(raw.get("dump_partition", "")),
            "base_chain": dg.MetadataValue.json(raw.get("base_chain", [])),
            "wal_files": dg.MetadataValue.int(raw.get("wal_files", 0)),
        },
        restored={
            "tables": dg.MetadataValue.int(report.tables or 0),
            "rows": dg.MetadataValue.int(report.rows or 0),
            "recovered_to": dg.MetadataValue.text(raw.get("recovered_to", "")),
        },
    )


def build_pitr_drill(binding: PgBinding):
    """(drill asset, its checks, its job, its schedule) of one source with PITR on."""
    # On the 1st at 06:00 UTC: after the 03:00 dump, the WAL runs since, and the 05:00 restore drill.
    return build_drill(
        binding, "postgres_pitr_drill", REPORTS, _series_name, _pitr_drill, DESCRIPTION, cron="0 6 1 * *"
    )


def _series_name(source) -> str:
    return source.series_name()
