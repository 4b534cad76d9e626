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
from .assets import DAILY_SPEC, WEEKLY_SPEC, BackupSpec, build_backup_asset, series_for
from .checks import build_backup_checks
from .on_demand import build_on_demand_job, on_demand_series


def _is_freshness(checks_def) -> bool:
    return any(k.name == "freshness" for k in checks_def.check_keys)


def _cadence(binding: PgBinding, spec: BackupSpec):
    """(asset, its checks, its job, its schedule) of one cadence; the job and the schedule are named after the
    asset: postgres_daily_backup_job, postgres_daily_backup_schedule. The partitions and the cron are the
    source's of that cadence (`partitions.daily`, `daily_schedule`)."""
    spec = replace(spec, partitions_def=getattr(binding.partitions, spec.cadence))
    cron = getattr(binding.spec, f"{spec.cadence}_schedule")
    asset, checks = build_backup_asset(spec, binding), build_backup_checks(spec, binding)
    job = source_asset_job(binding, f"{spec.asset_name}_job", asset, spec.job_description)
    schedule = latest_partition_schedule(
        binding.named(f"{spec.asset_name}_schedule"), job, spec.partitions_def, cron, spec.schedule_description
    )
    return asset, checks, job, schedule


def _backup_class(binding: PgBinding, name: str, spec: BackupSpec, keep_days: float, max_age_hours) -> ArtifactClass:
    """The artifact class of one cadence's backups, for retention, lifecycle and the health report."""
    return ArtifactClass(
        binding.class_name(name),
        spec.storage_key(binding),
        lambda r: series_for(spec, binding.source(r)),
        keep_days,
        resource_keys=(binding.source_key,),
        asset=binding.key(spec.asset_name).to_user_string(),
        alert_limit=max_age_hours,
    )


def _artifact_classes(binding: PgBinding) -> list[ArtifactClass]:
    def drill_proven(resources, warn) -> set[str]:
        """The daily backup the latest passing restore drill proved: retention never deletes it."""
        source = binding.source(resources)
        names = (source.series_name(), source.legacy_series_name())  # reports from before the series were renamed
        report = DrillReport.of(newest_passing_report(binding.storage(resources).open(), names, warn))
        return {report.backup_partition} if report else set()

    spec = binding.spec
    # Strategy: daily backups kept 7 days, the weekly external copy 30 days (per source in the sources file).
    daily = _backup_class(
        binding, "postgres_daily", DAILY_SPEC, spec.daily_retention_days, lambda r: r.backup_policy.daily_max_age_hours
    )
    weekly = _backup_class(
        binding,
        "postgres_weekly",
        WEEKLY_SPEC,
        spec.weekly_retention_days,
        lambda r: r.backup_policy.weekly_max_age_hours,
    )
    return [
        replace(daily, protected=drill_proven),
        weekly,
        # On-demand backups ("before the migration"): their own series, kept 30 days by default.
        ArtifactClass(
            binding.class_name("postgres_on_demand"),
            binding.storage_key,
            lambda r: on_demand_series(binding.source(r)),
            30,
            resource_keys=(binding.source_key,),
        ),
    ]


def build(binding: PgBinding) -> DomainDefs:
    # The strategy's daily backup at 03:00 UTC and its manual weekly one, Sundays 02:00 (defaults).
    assets, per_cadence, jobs, schedules = zip(
        *(_cadence(binding, spec) for spec in (DAILY_SPEC, WEEKLY_SPEC)), strict=True
    )
    checks = [c for cadence_checks in per_cadence for c in cadence_checks]
    return DomainDefs(
        defs=dg.Definitions(
            assets=list(assets),
            asset_checks=checks,
            jobs=[*jobs, build_on_demand_job(binding)],
            schedules=list(schedules),
        ),
        health_checks=[c for c in checks if _is_freshness(c)],
        artifact_classes=_artifact_classes(binding),
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
