"""Redis snapshots, per source: the hourly asset, its checks, the persistence sensor, recovery jobs and the
restore drill."""

import dagster as dg

from ...core.artifacts.drill_reports import DrillReport
from ...core.redis.backup import partition_segment
from ...core.redis.drill import newest_passing_report
from ..drills import recent_drill_checks
from ..protection.classes import ArtifactClass
from ..sources import DomainDefs, RedisBinding
from .assets import build_snapshot_asset, redis_series
from .checks import build_snapshot_checks
from .drill import _source, build_drill
from .jobs import build_recovery_jobs, build_snapshot_job
from .sensors import build_persistence_sensor


def build(binding: RedisBinding) -> DomainDefs:
    snapshot = build_snapshot_asset(binding)
    snapshot_checks, series_checks = build_snapshot_checks(binding)
    drill, drill_checks, drill_job, drill_schedule = build_drill(binding)
    snapshot_job, snapshot_schedule = build_snapshot_job(binding, snapshot)
    recent_drill = recent_drill_checks(drill_checks)

    def drill_proven(resources, warn) -> set[str]:
        """The snapshot the latest passing Redis drill proved: retention never deletes it."""
        found = newest_passing_report(binding.storage(resources).open(), _source(binding.source(resources)), warn)
        report = DrillReport.of(found)
        return {partition_segment(report.backup_partition)} if report else set()

    # Hourly snapshots kept 7 days by default (168; the strategy sets no Redis retention, so the daily backups').
    artifact_class = ArtifactClass(
        binding.class_name("redis_hourly"),
        binding.storage_key,
        lambda r: redis_series(binding.source(r)),
        binding.spec.retention_days,
        drill_proven,
        resource_keys=(binding.source_key,),
        asset=binding.key("redis_snapshot").to_user_string(),
        alert_limit=lambda r: binding.source(r).snapshot_max_age_hours,
    )
    return DomainDefs(
        defs=dg.Definitions(
            assets=[snapshot, drill],
            asset_checks=[*snapshot_checks, *drill_checks],
            jobs=[snapshot_job, *build_recovery_jobs(binding), drill_job],
            schedules=[snapshot_schedule, drill_schedule],
            sensors=[build_persistence_sensor(binding, snapshot_job)],
        ),
        health_checks=[*series_checks, *recent_drill],
        artifact_classes=[artifact_class],
    )
