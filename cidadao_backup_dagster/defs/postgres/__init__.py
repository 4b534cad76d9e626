"""PostgreSQL backups: per source, a daily and a weekly offsite asset with their checks, jobs and schedules."""

from dataclasses import replace

import dagster as dg

from ...core.artifacts.drill_reports import DrillReport
from ...core.postgres.drill import newest_passing_report
from ...core.sources import PostgresSourceSpec
from ..protection.classes import ArtifactClass
from ..schedules import latest_partition_schedule, source_asset_job
from ..settings import Settings
from ..sources import DomainDefs, PgBinding
from .assets import DAILY_SPEC, WEEKLY_SPEC, build_backup_asset, series_for
from .checks import build_backup_checks
from .on_demand import build_on_demand_job, on_demand_series


def _is_freshness(checks_def) -> bool:
    return any(k.name == "freshness" for k in checks_def.check_keys)


def build(binding: PgBinding) -> DomainDefs:
    spec = binding.spec
    daily_spec = replace(DAILY_SPEC, partitions_def=binding.partitions.daily)
    weekly_spec = replace(WEEKLY_SPEC, partitions_def=binding.partitions.weekly)
    daily, weekly = build_backup_asset(daily_spec, binding), build_backup_asset(weekly_spec, binding)
    daily_checks, weekly_checks = build_backup_checks(daily_spec, binding), build_backup_checks(weekly_spec, binding)
    daily_job = source_asset_job(
        binding,
        "postgres_daily_backup_job",
        daily,
        "Daily PostgreSQL backup with its integrity, size and freshness checks.",
    )
    weekly_job = source_asset_job(
        binding,
        "postgres_weekly_offsite_backup_job",
        weekly,
        "Weekly PostgreSQL backup to OFFSITE_STORAGE_URL with its checks.",
    )

    def drill_proven(resources, warn) -> set[str]:
        """The daily backup the latest passing restore drill proved: retention never deletes it."""
        source = binding.source(resources)
        names = (source.series_name(), source.legacy_series_name())  # reports from before the series were renamed
        report = DrillReport.of(newest_passing_report(binding.storage(resources).open(), names, warn))
        return {report.backup_partition} if report else set()

    source_keys = (binding.source_key,)
    # Strategy: daily backups kept 7 days, the weekly external copy 30 days (per source in the sources file).
    classes = [
        ArtifactClass(
            binding.class_name("postgres_daily"),
            binding.storage_key,
            lambda r: series_for(DAILY_SPEC, binding.source(r)),
            spec.daily_retention_days,
            drill_proven,
            resource_keys=source_keys,
            asset=binding.key(DAILY_SPEC.asset_name).to_user_string(),
            alert_limit=lambda r: r.backup_policy.daily_max_age_hours,
        ),
        ArtifactClass(
            binding.class_name("postgres_weekly"),
            binding.offsite_key,
            lambda r: series_for(WEEKLY_SPEC, binding.source(r)),
            spec.weekly_retention_days,
            resource_keys=source_keys,
            asset=binding.key(WEEKLY_SPEC.asset_name).to_user_string(),
            alert_limit=lambda r: r.backup_policy.weekly_max_age_hours,
        ),
        # On-demand backups ("before the migration"): their own series, kept 30 days by default.
        ArtifactClass(
            binding.class_name("postgres_on_demand"),
            binding.storage_key,
            lambda r: on_demand_series(binding.source(r)),
            30,
            resource_keys=source_keys,
        ),
    ]
    return DomainDefs(
        defs=dg.Definitions(
            assets=[daily, weekly],
            asset_checks=[*daily_checks, *weekly_checks],
            jobs=[daily_job, weekly_job, build_on_demand_job(binding)],
            schedules=[
                # The strategy's daily backup at 03:00 UTC and its manual weekly one, Sundays 02:00 (defaults).
                latest_partition_schedule(
                    binding.named("postgres_daily_backup_schedule"),
                    daily_job,
                    daily_spec.partitions_def,
                    spec.daily_schedule,
                    "Daily backup of the UTC day that just ended.",
                ),
                latest_partition_schedule(
                    binding.named("postgres_weekly_offsite_backup_schedule"),
                    weekly_job,
                    weekly_spec.partitions_def,
                    spec.weekly_schedule,
                    "Weekly offsite backup of the Sunday-to-Saturday week that just ended.",
                ),
            ],
        ),
        health_checks=[c for c in [*daily_checks, *weekly_checks] if _is_freshness(c)],
        artifact_classes=classes,
        storage_targets=[
            (binding.key(DAILY_SPEC.asset_name), binding.storage_key),
            (binding.key(WEEKLY_SPEC.asset_name), binding.offsite_key),
        ],
    )


def daily_checks(settings: Settings | None = None) -> list[dg.AssetChecksDefinition]:
    """The implicit source's daily-backup checks (built from the environment now), for tests and tools that
    pick single checks."""
    binding = PgBinding.of(PostgresSourceSpec(), settings or Settings.from_environ())
    built = build(binding).defs.asset_checks or []
    return [c for c in built if all(k.asset_key == binding.key(DAILY_SPEC.asset_name) for k in c.check_keys)]
