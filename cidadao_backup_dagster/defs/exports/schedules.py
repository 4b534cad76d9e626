"""When the exports run. Schedules start RUNNING, like the backups'."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from .assets import DAILY, agent_instances_csv_export, investigations_json_export

# The strategy exports "the last 7 days" every day. Each day is its own partition here, and the daily run
# re-exports the last seven of them in one snapshot: an investigation that finishes (status, results) days
# after it was created is in the export within a day, and the union of the last seven partitions is always
# the strategy's window as of the latest run.
TRAILING_DAYS = 7

# The run tags a single-run backfill of a partition range carries (what the UI sets for a range).
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"

investigations_json_export_job = dg.define_asset_job(
    "investigations_json_export_job",
    selection=dg.AssetSelection.assets(investigations_json_export),
    description="Daily JSON Lines export of investigations with its integrity, row count, drift and size checks.",
)
agent_instances_csv_export_job = dg.define_asset_job(
    "agent_instances_csv_export_job",
    selection=dg.AssetSelection.assets(agent_instances_csv_export),
    description="Weekly CSV snapshot of agent_instances with its checks.",
)


def trailing_days(scheduled: datetime, days: int = TRAILING_DAYS) -> tuple[str, str]:
    """(first, last) partition keys: the `days` UTC days that ended by `scheduled`, clipped to the first partition."""
    last = scheduled.astimezone(UTC).date() - timedelta(days=1)
    first = last - timedelta(days=days - 1)
    start = DAILY.start.date()
    return max(first, start).isoformat(), last.isoformat()


@dg.schedule(
    name="investigations_json_export_schedule",
    job=investigations_json_export_job,
    cron_schedule="30 3 * * *",  # after the 03:00 UTC backup
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"03:30 UTC: exports the last {TRAILING_DAYS} UTC days (one run, one snapshot).",
)
def investigations_json_export_schedule(context: dg.ScheduleEvaluationContext):
    first, last = trailing_days(context.scheduled_execution_time)
    if last < first:
        return dg.SkipReason(f"No complete day since the first partition ({first}) yet")
    return dg.RunRequest(
        run_key=f"{first}..{last}",
        tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
    )


# Sundays 02:30 UTC, for the Sunday-to-Saturday week that just ended (after the 02:00 weekly backup).
agent_instances_csv_export_schedule = dg.build_schedule_from_partitioned_job(
    agent_instances_csv_export_job,
    name="agent_instances_csv_export_schedule",
    day_of_week=0,
    hour_of_day=2,
    minute_of_hour=30,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
