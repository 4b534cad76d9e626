"""Protection across every artifact class: retention with safety floors (and, on S3, lifecycle tiers and
immutability checks), built from the classes the domains declare; and the sweeper of what dead runs left."""

import dagster as dg

from ..settings import Settings, from_env
from ..sources import PgBinding
from .classes import ArtifactClass
from .retention import RetentionSettings, build_retention_job, build_retention_schedule, pitr_retention_classes
from .storage_checks import build_apply_s3_lifecycle, build_storage_checks
from .sweeper import build_sweeper


def build_storage_checks_for(targets: list[tuple[dg.AssetKey, str]]) -> list[dg.AssetChecksDefinition]:
    """Bucket-wide checks (lifecycle tiers, immutability), shown on each (asset, storage resource key) given.
    They also run hourly with the other health checks."""
    return [c for asset_key, storage_key in targets for c in build_storage_checks(asset_key, storage_key)]


def build_defs(
    classes: list[ArtifactClass], targets: list[tuple[dg.AssetKey, str]], settings: Settings
) -> dg.Definitions:
    """Retention over `classes`; bucket checks and lifecycle over the storages in `targets`."""
    job = build_retention_job(classes)
    storage_checks = build_storage_checks_for(targets)
    storage_keys = list(dict.fromkeys(["backup_storage", "offsite_storage", *(key for _, key in targets)]))
    return dg.Definitions(
        jobs=[job, build_apply_s3_lifecycle(storage_keys)],
        asset_checks=storage_checks,
        schedules=[build_retention_schedule(job)],
        resources={
            "retention": from_env(RetentionSettings, settings),
        },
    )


__all__ = ["ArtifactClass", "build_defs", "build_storage_checks_for", "build_sweeper_defs", "pitr_retention_classes"]


def build_sweeper_defs(settings: Settings) -> dg.Definitions:
    """`sweep_scratch` and its schedule over every PostgreSQL source's server (and the drill server)."""
    return build_sweeper([PgBinding.of(spec, settings) for spec in settings.sources.postgres])
