"""Critical data exports (the strategy's "Critical Data Exports"): assets, checks, jobs and schedules."""

import dagster as dg

from ..protection.classes import ArtifactClass
from ..sources import DomainDefs, PgBinding
from .assets import AGENT_INSTANCES, INVESTIGATIONS, build_export_asset, series_for, specs_for
from .checks import build_export_checks
from .resources import ExportPolicy, build_export_resources
from .schedules import build_export_jobs


def build(binding: PgBinding) -> DomainDefs:
    """The exports of `binding`, the export source (`exports: true`, else the first PostgreSQL source). Their
    asset keys and job names carry no source prefix and they read `postgres_source`, which build_resources
    points at the export source."""
    investigations_spec, agent_instances_spec = specs_for(binding)
    investigations = build_export_asset(investigations_spec, binding)
    agent_instances = build_export_asset(agent_instances_spec, binding)
    checks = [
        *build_export_checks(investigations_spec, investigations),
        *build_export_checks(agent_instances_spec, agent_instances),
    ]
    jobs, schedules = build_export_jobs(investigations, agent_instances)
    # Retention (LGPD: no longer than needed): daily JSON 30 days (the hot tier), weekly CSV 90 days.
    classes = [
        ArtifactClass(
            "exports_investigations",
            "backup_storage",
            lambda r: series_for(INVESTIGATIONS, r.postgres_source, r.export_policy),
            30,
            resource_keys=("postgres_source", "export_policy"),
        ),
        ArtifactClass(
            "exports_agent_instances",
            "backup_storage",
            lambda r: series_for(AGENT_INSTANCES, r.postgres_source, r.export_policy),
            90,
            resource_keys=("postgres_source", "export_policy"),
        ),
    ]
    return DomainDefs(
        defs=dg.Definitions(
            assets=[investigations, agent_instances], asset_checks=checks, jobs=jobs, schedules=schedules
        ),
        # Series-wide checks that must also run on their own schedule (definitions.py's hourly health-check
        # job): if the exports stop, nothing inside their runs would notice.
        health_checks=[c for c in checks if any(k.name == "freshness" for k in c.check_keys)],
        artifact_classes=classes,
    )


__all__ = ["ExportPolicy", "build", "build_export_resources"]
