"""Redis snapshots: the hourly asset, its checks, the persistence sensor, recovery jobs and the restore drill."""

import dagster as dg

from .assets import redis_snapshot
from .checks import series_checks, snapshot_checks
from .drill import (
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

defs = dg.Definitions(
    assets=[redis_snapshot, redis_restore_drill],
    asset_checks=[*snapshot_checks, *drill_checks],
    jobs=[redis_snapshot_job, restore_redis, flush_redis_cache, redis_restore_drill_job],
    schedules=[redis_snapshot_schedule, redis_restore_drill_schedule],
    sensors=[redis_persistence_sensor],
)
