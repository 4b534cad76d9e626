"""When the PostgreSQL backups run. Schedules start RUNNING: a backup tool that ships switched off is a trap."""

from __future__ import annotations

import dagster as dg

from .assets import postgres_daily_backup, postgres_weekly_offsite_backup

postgres_daily_backup_job = dg.define_asset_job(
    "postgres_daily_backup_job",
    selection=dg.AssetSelection.assets(postgres_daily_backup),
    description="Daily PostgreSQL backup with its integrity, size and freshness checks.",
)
postgres_weekly_offsite_backup_job = dg.define_asset_job(
    "postgres_weekly_offsite_backup_job",
    selection=dg.AssetSelection.assets(postgres_weekly_offsite_backup),
    description="Weekly PostgreSQL backup to OFFSITE_STORAGE_URL with its checks.",
)

# 03:00 UTC for the UTC day that just ended (the strategy's daily backup time).
postgres_daily_backup_schedule = dg.build_schedule_from_partitioned_job(
    postgres_daily_backup_job,
    name="postgres_daily_backup_schedule",
    hour_of_day=3,
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
# Sundays 02:00 UTC for the Sunday-to-Saturday week that just ended (the strategy's manual weekly backup).
postgres_weekly_offsite_backup_schedule = dg.build_schedule_from_partitioned_job(
    postgres_weekly_offsite_backup_job,
    name="postgres_weekly_offsite_backup_schedule",
    day_of_week=0,
    hour_of_day=2,
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
