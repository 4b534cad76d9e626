"""PostgreSQL backups: assets, checks, jobs and schedules."""

from __future__ import annotations

import dagster as dg

from ...core.pg_backup import safe_name
from ...core.pg_drill import newest_passing_report
from ..protection.classes import ArtifactClass
from .assets import DAILY_SPEC, WEEKLY_SPEC, postgres_daily_backup, postgres_weekly_offsite_backup, series_for
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


def _drill_proven(resources) -> set[str]:
    """The daily backup the latest passing restore drill proved: retention never deletes it."""
    source = safe_name(resources.postgres_source.connection().dbname)
    report = newest_passing_report(resources.backup_storage.open(), source)
    return {report["backup_partition"]} if report else set()


# Strategy: daily backups kept 7 days, the weekly external copy 30 days.
artifact_classes = [
    ArtifactClass(
        "postgres_daily", "backup_storage", lambda r: series_for(DAILY_SPEC, r.postgres_source), 7, _drill_proven
    ),
    ArtifactClass("postgres_weekly", "offsite_storage", lambda r: series_for(WEEKLY_SPEC, r.postgres_source), 30),
]

defs = dg.Definitions(
    assets=[postgres_daily_backup, postgres_weekly_offsite_backup],
    asset_checks=[*daily_checks, *weekly_checks],
    jobs=[postgres_daily_backup_job, postgres_weekly_offsite_backup_job],
    schedules=[
        postgres_daily_backup_schedule,
        postgres_weekly_offsite_backup_schedule,
    ],
)
