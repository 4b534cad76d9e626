"""When the exports run. Schedules start RUNNING, like the backups'."""

from datetime import UTC, date, datetime, timedelta

import dagster as dg

# The strategy exports "the last 7 days" every day. Each day is its own partition here, and the daily run
# re-exports the last seven of them in one snapshot: an investigation that finishes (status, results) days
# after it was created is in the export within a day, and the union of the last seven partitions is always
# the strategy's window as of the latest run.
TRAILING_DAYS = 7

# The run tags a single-run backfill of a partition range carries (what the UI sets for a range).
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def trailing_days(scheduled: datetime, first_partition: date, days: int = TRAILING_DAYS) -> tuple[str, str]:
    """(first, last) partition keys: the `days` UTC days that ended by `scheduled`, clipped to the first partition."""
    last = scheduled.astimezone(UTC).date() - timedelta(days=1)
    first = last - timedelta(days=days - 1)
    return max(first, first_partition).isoformat(), last.isoformat()


def build_export_jobs(investigations: dg.AssetsDefinition, agent_instances: dg.AssetsDefinition):
    """([investigations job, agent_instances job], [their schedules])."""
    investigations_job = dg.define_asset_job(
        "investigations_json_export_job",
        selection=dg.AssetSelection.assets(investigations),
        description="Daily JSON Lines export of investigations with its integrity, row count, drift and size checks.",
    )
    agent_instances_job = dg.define_asset_job(
        "agent_instances_csv_export_job",
        selection=dg.AssetSelection.assets(agent_instances),
        description="Weekly CSV snapshot of agent_instances with its checks.",
    )
    first_partition = investigations.partitions_def.start.date()

    @dg.schedule(
        name="investigations_json_export_schedule",
        job=investigations_job,
        cron_schedule="30 3 * * *",  # after the 03:00 UTC backup
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"03:30 UTC: exports the last {TRAILING_DAYS} UTC days (one run, one snapshot).",
    )
    def investigations_json_export_schedule(context: dg.ScheduleEvaluationContext):
        first, last = trailing_days(context.scheduled_execution_time, first_partition)
        if last < first:
            return dg.SkipReason(f"No complete day since the first partition ({first}) yet")
        return dg.RunRequest(
            run_key=f"{first}..{last}",
            tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
        )

    weekly = agent_instances.partitions_def

    # Sundays 02:30 UTC, for the Sunday-to-Saturday week that just ended (after the 02:00 weekly backup). What
    # build_schedule_from_partitioned_job did, without its deprecated run_request_for_partition.
    @dg.schedule(
        name="agent_instances_csv_export_schedule",
        job=agent_instances_job,
        cron_schedule="30 2 * * 0",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def agent_instances_schedule(context: dg.ScheduleEvaluationContext):
        with dg.partition_loading_context(effective_dt=context.scheduled_execution_time):
            partition = weekly.get_last_partition_key()
        if partition is None:
            return dg.SkipReason("The job's PartitionsDefinition has no partitions")
        return dg.RunRequest(run_key=partition, partition_key=partition)

    return [investigations_job, agent_instances_job], [investigations_json_export_schedule, agent_instances_schedule]
