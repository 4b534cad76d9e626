"""Redis snapshots: the hourly asset, its checks, the persistence sensor, recovery jobs and the restore drill."""

import dagster as dg

from ...core.redis_backup import partition_segment
from ...core.redis_restore import newest_passing_report
from ..protection.classes import ArtifactClass
from .assets import redis_series, redis_snapshot
from .checks import series_checks, snapshot_checks
from .drill import (
    _source,
    drill_checks,
    redis_recent_passing_drill,
    redis_restore_drill,
    redis_restore_drill_job,
    redis_restore_drill_schedule,
)
from .jobs import flush_redis_cache, redis_snapshot_job, redis_snapshot_schedule, restore_redis
from .sensors import redis_persistence_sensor

# Series-wide checks that must also run on their own schedule (see definitions.py).
health_checks = [*series_checks, redis_recent_passing_drill]


def _drill_proven(resources) -> set[str]:
    """The snapshot the latest passing Redis drill proved: retention never deletes it."""
    report = newest_passing_report(resources.backup_storage.open(), _source(resources.redis_source))
    return {partition_segment(report["backup_partition"])} if report else set()


# Hourly snapshots kept 7 days (168 of them; the strategy sets no Redis retention, so the daily backups' 7 days).
artifact_classes = [
    ArtifactClass(
        "redis_hourly",
        "backup_storage",
        lambda r: redis_series(r.redis_source),
        7,
        _drill_proven,
        resource_keys=("redis_source",),
    ),
]

defs = dg.Definitions(
    assets=[redis_snapshot, redis_restore_drill],
    asset_checks=[*snapshot_checks, *drill_checks],
    jobs=[redis_snapshot_job, restore_redis, flush_redis_cache, redis_restore_drill_job],
    schedules=[redis_snapshot_schedule, redis_restore_drill_schedule],
    sensors=[redis_persistence_sensor],
)
