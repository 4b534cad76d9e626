"""Protection across every artifact class: retention with safety floors (and, on S3, lifecycle tiers and
immutability checks). Built from the classes the domains declare."""

import dagster as dg

from ..resources import env_or
from .classes import ArtifactClass
from .retention import RetentionSettings, build_retention_job, build_retention_schedule
from .storage_checks import apply_s3_lifecycle, storage_checks

# Bucket-wide checks that also run hourly with the other health checks.
health_checks = storage_checks


def build_defs(classes: list[ArtifactClass]) -> dg.Definitions:
    job = build_retention_job(classes)
    return dg.Definitions(
        jobs=[job, apply_s3_lifecycle],
        asset_checks=storage_checks,
        schedules=[build_retention_schedule(job)],
        resources={
            "retention": RetentionSettings(
                days=env_or("BACKUP_RETENTION_DAYS", ""), min_keep=env_or("RETENTION_MIN_KEEP", 3, as_int=True)
            )
        },
    )
