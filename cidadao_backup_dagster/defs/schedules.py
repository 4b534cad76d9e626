"""Schedules that run the period which just ended, on any cron a source asks for. Schedules start RUNNING:
a backup tool that ships switched off is a trap."""

import dagster as dg


def latest_partition_schedule(
    name: str, job, partitions_def: dg.TimeWindowPartitionsDefinition, cron: str, description: str
) -> dg.ScheduleDefinition:
    """At each `cron` tick (UTC), one run of the newest complete partition: at 03:00 the day that just ended,
    at :05 the hour that just ended. (build_schedule_from_partitioned_job takes no cron for time partitions.)"""

    @dg.schedule(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"{description} Cron `{cron}` (UTC); each tick runs the period that just ended.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):
        with dg.partition_loading_context(effective_dt=context.scheduled_execution_time):
            partition = partitions_def.get_last_partition_key()
        if partition is None:
            return dg.SkipReason("No complete partition yet")
        # Dagster dedups a schedule's run_key only per tick time: a cron ticking more often than the partitions
        # (e.g. "* * * * *" on daily ones) would back up the same period again and again. One run per period;
        # another only after the earlier one failed or was canceled.
        earlier = context.instance.get_runs(
            filters=dg.RunsFilter(
                job_name=job.name, tags={"dagster/schedule_name": name, "dagster/partition": partition}
            ),
            limit=1,
        )
        if earlier and earlier[0].status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            return dg.SkipReason(
                f"Partition {partition} already has run {earlier[0].run_id} ({earlier[0].status.value}) from this "
                "schedule; the next one runs when the next period ends"
            )
        return dg.RunRequest(run_key=partition, partition_key=partition)

    return _schedule


def source_asset_job(binding, base: str, asset: dg.AssetsDefinition, description: str):
    """The job materializing one source's `asset` (with its checks), named `base` or `<source>__base`."""
    return dg.define_asset_job(
        binding.named(base), selection=dg.AssetSelection.assets(asset), description=description, tags=binding.tags
    )
