"""What the two deleting jobs (`apply_retention`, `sweep_scratch`) share: a dry run by default when launched by
hand, and a daily schedule that runs them for real."""

import dagster as dg
from pydantic import Field


class DryRunConfig(dg.Config):
    dry_run: bool = Field(default=True, description="Show the plan only. The daily schedule runs with false.")


def daily_for_real(job: dg.JobDefinition, cron: str) -> dg.ScheduleDefinition:
    """`<job>_schedule`: runs `job`'s one op, `<job>_op`, with dry_run false at `cron` (UTC)."""
    return dg.ScheduleDefinition(
        name=f"{job.name}_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        run_config={"ops": {f"{job.name}_op": {"config": {"dry_run": False}}}},
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def finish(metadata: dict[str, dg.MetadataValue], problem: str = "") -> dg.Output:
    """The op's output carrying its plan; with a `problem`, a Failure carrying the same metadata. Not retried:
    what was done is done, and what was not is left to the next run."""
    if problem:
        raise dg.Failure(problem, metadata=metadata, allow_retries=False)
    return dg.Output(None, metadata=metadata)
