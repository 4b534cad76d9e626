"""The code location: `dagster dev -w workspace.yaml` or `-m cidadao_backup_dagster.definitions`."""

from __future__ import annotations

import dagster as dg

from .defs import exports, monitoring, postgres, protection, recovery, redis
from .defs.resources import build_resources

DOMAINS = [postgres, recovery, exports, redis]

# Checks that judge a whole series (is the newest backup recent? did a drill pass lately?) also run hourly
# on their own: if backups or drills stop running, nothing inside those runs would notice.
health_checks_job = dg.define_asset_job(
    "backup_health_checks_job",
    selection=dg.AssetSelection.checks(
        *[c for domain in DOMAINS for c in domain.health_checks], *protection.health_checks
    ),
    description="RPO freshness of every backup series and recency of the last passing restore drill.",
)
health_checks_schedule = dg.ScheduleDefinition(
    name="backup_health_checks_schedule",
    job=health_checks_job,
    cron_schedule="17 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def build_defs() -> dg.Definitions:
    """Definitions with resources read from the environment as it is now (tests and the quick start
    call this after setting variables; the code location uses `defs` below)."""
    classes = [c for domain in DOMAINS for c in getattr(domain, "artifact_classes", [])]
    resources = {**build_resources(), **exports.build_export_resources()}
    parts = [*(domain.defs for domain in DOMAINS), protection.build_defs(classes)]
    checks = [c for part in parts for c in part.asset_checks or []]
    return dg.Definitions.merge(
        *parts,
        monitoring.build_defs(classes, set(resources), checks),
        dg.Definitions(
            jobs=[health_checks_job],
            schedules=[health_checks_schedule],
            resources=resources,
        ),
    )


defs = build_defs()
