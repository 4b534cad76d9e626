"""`redis_persistence_sensor`: when the server's own persistence fails (never saved since its start, or last
save too old, with unsaved changes; or the last BGSAVE failed), take a snapshot now instead of waiting for the
next hour.

One incident gives one run: the incident id is keyed on LASTSAVE, used as the run key (Dagster never
launches two runs with the same key from one sensor) and kept in the cursor to log the incident once."""

import dagster as dg

from ...core.artifacts.manifest import utc_now
from ...core.errors import BackupError, ConfigurationError
from ...core.redis.health import persistence_incident, read_persistence
from ..resources import RedisSource
from ..sources import RedisBinding


def build_persistence_sensor(binding: RedisBinding, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=binding.named("redis_persistence_sensor"),
        job=job,
        required_resource_keys={binding.source_key},
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Polls LASTSAVE / INFO persistence every 5 min; requests one snapshot of the last hour's partition "
        "per persistence incident (never saved since its start or last save older than 3600 s, with unsaved "
        "changes; or last BGSAVE failed).",
    )
    def redis_persistence_sensor(context: dg.SensorEvaluationContext):
        redis_source: RedisSource = binding.source(context.resources)
        try:
            info = read_persistence(redis_source.endpoint()).info
        except (ConfigurationError, BackupError) as exc:
            return dg.SkipReason(f"Cannot read Redis persistence: {exc}")
        now = utc_now()
        incident = persistence_incident(info, now, redis_source.max_last_save_age_s)
        if incident is None:
            return dg.SensorResult(skip_reason=dg.SkipReason("Redis persistence is healthy"), cursor="")
        incident_id, reason = incident
        if context.cursor == incident_id:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(f"Incident {incident_id} already has its snapshot run"), cursor=incident_id
            )
        partition = binding.partitions.hourly.get_last_partition_key()  # the hour that just ended
        context.log.warning(f"Redis persistence incident {incident_id}: {reason}. Requesting a snapshot of {partition}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{binding.named('redis-persistence')}-{incident_id}",
                    partition_key=partition,
                    tags={"cidadao/trigger": "redis_persistence_sensor", "cidadao/incident": incident_id},
                )
            ],
            cursor=incident_id,
        )

    return redis_persistence_sensor
