"""PostgreSQL backups: assets, checks, jobs and schedules."""

from __future__ import annotations

import dagster as dg

from .assets import DAILY_SPEC, WEEKLY_SPEC, postgres_daily_backup, postgres_weekly_offsite_backup
from .checks import build_backup_checks
from .schedules import (
    postgres_daily_backup_job,
    postgres_daily_backup_schedule,
    postgres_weekly_offsite_backup_job,
    postgres_weekly_offsite_backup_schedule,
)

daily_checks = build_backup_checks(DAILY_SPEC, postgres_daily_backup)
weekly_checks = build_backup_checks(WEEKLY_SPEC, postgres_weekly_offsite_backup)
freshness_checks = [c for c in [*daily_checks, *weekly_checks] if any(k.name == "freshness" for k in c.check_keys)]

# Series-wide checks that must also run on their own schedule (see definitions.py).
health_checks = freshness_checks

defs = dg.Definitions(
    assets=[postgres_daily_backup, postgres_weekly_offsite_backup],
    asset_checks=[*daily_checks, *weekly_checks],
    jobs=[postgres_daily_backup_job, postgres_weekly_offsite_backup_job],
    schedules=[
        postgres_daily_backup_schedule,
        postgres_weekly_offsite_backup_schedule,
    ],
)
