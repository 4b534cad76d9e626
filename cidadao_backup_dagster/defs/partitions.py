"""Partitions of the snapshot-type assets (PostgreSQL daily/weekly, Redis hourly, the weekly agent_instances
CSV) and the late-partition guard they all run first.

The first partition is BACKUP_PARTITIONS_START (YYYY-MM-DD, set at deploy time; read by defs/settings.py): a new
deployment then shows no wall of "missing" partitions inviting a backfill that would store today's data under old
dates.
"""

from dataclasses import dataclass
from datetime import date, timedelta

import dagster as dg
from pydantic import Field

from ..core.artifacts.lateness import Lateness, check_late
from ..core.errors import ConfigurationError, RefusedError
from .failures import failure

START_VARIABLE = "BACKUP_PARTITIONS_START"
DEFAULT_START = "2026-11-01"  # the release that introduced it; deployments set their own go-live date


def parse_start(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            START_VARIABLE, f"{text!r} is not a date", "use YYYY-MM-DD, e.g. the day this deployment went live"
        ) from None


@dataclass(frozen=True)
class BackupPartitions:
    daily: dg.DailyPartitionsDefinition
    weekly: dg.WeeklyPartitionsDefinition  # Sunday-to-Saturday, from the first Sunday on or after the start
    hourly: dg.HourlyPartitionsDefinition


def backup_partitions(start: date) -> BackupPartitions:
    first_sunday = start + timedelta(days=(6 - start.weekday()) % 7)
    return BackupPartitions(
        daily=dg.DailyPartitionsDefinition(start_date=start.isoformat(), timezone="UTC"),
        weekly=dg.WeeklyPartitionsDefinition(start_date=first_sunday.isoformat(), day_offset=0, timezone="UTC"),
        hourly=dg.HourlyPartitionsDefinition(start_date=f"{start.isoformat()}-00:00", timezone="UTC"),
    )


class SnapshotConfig(dg.Config):
    allow_late: bool = Field(
        default=False,
        description="Back up a partition whose period ended longer ago than the grace (BACKUP_LATE_GRACE_HOURS). "
        "The data is today's whatever the label says: the manifest and metadata then record late: true and the "
        "real snapshot time. For a backup 'right now', prefer the current partition or the on-demand job.",
    )


def guard_late(context, partition_key: str, cadence: str, backup_policy, config: SnapshotConfig, what: str) -> Lateness:
    """Refuse a late partition before anything is written (a dg.Failure that is not retried)."""
    window = context.assets_def.partitions_def.time_window_for_partition_key(partition_key)
    try:
        lateness = check_late(
            partition_key, window.end, cadence=cadence, grace_hours=backup_policy.late_grace(),
            allow_late=config.allow_late, what=what,
        )  # fmt: skip
    except (RefusedError, ConfigurationError) as exc:
        raise failure(exc, allow_retries=False) from exc
    if lateness.late:
        context.log.warning(
            f"Partition {partition_key} is late (ended {window.end:%Y-%m-%d %H:%M} UTC) and allowed on purpose: "
            "the backup holds the data of now and its manifest says late: true"
        )
    return lateness


def late_metadata(lateness: Lateness) -> dict[str, dg.MetadataValue]:
    return {"late": dg.MetadataValue.bool(lateness.late)}
