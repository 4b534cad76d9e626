"""Critical data exports (the strategy's "Critical Data Exports"): assets, checks, jobs and schedules."""

import dagster as dg

from ..protection.classes import ArtifactClass
from .assets import (
    AGENT_INSTANCES,
    INVESTIGATIONS,
    agent_instances_csv_export,
    investigations_json_export,
    series_for,
)
from .checks import build_export_checks
from .resources import ExportPolicy, build_export_resources
from .schedules import (
    agent_instances_csv_export_job,
    agent_instances_csv_export_schedule,
    investigations_json_export_job,
    investigations_json_export_schedule,
)

investigations_checks = build_export_checks(INVESTIGATIONS, investigations_json_export)
agent_instances_checks = build_export_checks(AGENT_INSTANCES, agent_instances_csv_export)

# Series-wide checks that must also run on their own schedule (definitions.py's hourly health-check job):
# if the exports stop, nothing inside their runs would notice.
health_checks = [
    c for c in [*investigations_checks, *agent_instances_checks] if any(k.name == "freshness" for k in c.check_keys)
]

# Retention (LGPD: no longer than needed): daily JSON 30 days (the hot tier), weekly CSV 90 days.
artifact_classes = [
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

defs = dg.Definitions(
    assets=[investigations_json_export, agent_instances_csv_export],
    asset_checks=[*investigations_checks, *agent_instances_checks],
    jobs=[investigations_json_export_job, agent_instances_csv_export_job],
    schedules=[investigations_json_export_schedule, agent_instances_csv_export_schedule],
)

__all__ = ["ExportPolicy", "build_export_resources", "defs", "health_checks"]
