"""Lifecycle tiers and immutability of the S3 buckets that hold backups: a job applies the strategy's tiers,
checks report drift (WARN) and buckets without versioning / Object Lock (WARN)."""

import dagster as dg

from ...core.artifacts.storage import S3Storage
from ...core.errors import ConfigurationError
from ...core.protection.lifecycle import apply_lifecycle, immutability, lifecycle_drift
from ..resources import BackupStorage


def _s3(resource: BackupStorage) -> S3Storage | None:
    try:
        storage = resource.open()
    except ConfigurationError:
        return None
    return storage if isinstance(storage, S3Storage) else None


def build_storage_checks(asset_key: dg.AssetKey, storage_key: str) -> list[dg.AssetChecksDefinition]:
    """The bucket checks, shown on `asset_key` (a backup asset), for the storage resource `storage_key`."""

    @dg.asset_check(
        asset=asset_key,
        name="storage_lifecycle",
        required_resource_keys={storage_key},
        description="WARN when the bucket's lifecycle rule differs from the strategy's tiers (Standard 30 d, "
        "Glacier 90 d, Deep Archive 1 y, expiry). Run apply_s3_lifecycle to install it. Local folders: n/a.",
    )
    def storage_lifecycle(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        storage = _s3(getattr(context.resources, storage_key))
        if storage is None:
            return dg.AssetCheckResult(passed=True, description="Not an S3 bucket: no lifecycle tiers apply")
        drift = lifecycle_drift(storage)
        return dg.AssetCheckResult(
            passed=not drift,
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(drift) or f"Lifecycle tiers in place on {storage.url}",
        )

    @dg.asset_check(
        asset=asset_key,
        name="storage_immutable",
        required_resource_keys={storage_key, "encryption"},
        description="In production (CIDADAO_ENV), WARN unless bucket versioning is on (and Object Lock, where "
        "the service has it), so that no credential can silently destroy backup history.",
    )
    def storage_immutable(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        storage = _s3(getattr(context.resources, storage_key))
        production = context.resources.encryption.production
        if storage is None:
            return dg.AssetCheckResult(
                passed=not production,
                severity=dg.AssetCheckSeverity.WARN,
                description="A local folder cannot be made immutable; production backups belong in a versioned bucket"
                if production
                else "Local folder (not production)",
            )
        state = immutability(storage)
        problems = []
        if state["versioning"] != "Enabled":
            problems.append(f"bucket versioning is {state['versioning']}")
        if state["object_lock"] is False:
            problems.append("Object Lock is off")
        return dg.AssetCheckResult(
            passed=not problems or not production,
            severity=dg.AssetCheckSeverity.WARN,
            description=("; ".join(problems) or "Versioning on") + ("" if production else " (not production)"),
            metadata={"versioning": state["versioning"], "object_lock": str(state["object_lock"])},
        )

    return [storage_lifecycle, storage_immutable]


def build_apply_s3_lifecycle(storage_keys: list[str]) -> dg.JobDefinition:
    """The job installing the tiers on every storage resource in `storage_keys` (each source's prefix)."""

    @dg.op(
        required_resource_keys=set(storage_keys),
        description="Install the strategy's lifecycle tiers on every S3 bucket/prefix holding backups.",
        tags={"cidadao/domain": "protection"},
    )
    def apply_s3_lifecycle_op(context: dg.OpExecutionContext) -> dg.Output:
        applied = []
        for key in storage_keys:
            storage = _s3(getattr(context.resources, key))
            if storage is None:
                context.log.info(f"{key}: not an S3 bucket, nothing to do")
                continue
            if storage.url in applied:
                continue
            rule = apply_lifecycle(storage)
            applied.append(storage.url)
            context.log.info(f"{key}: lifecycle rule {rule['ID']} installed on {storage.url}")
        return dg.Output(None, metadata={"applied_to": dg.MetadataValue.text(", ".join(applied) or "none")})

    @dg.job(
        name="apply_s3_lifecycle",
        description="Apply the strategy's storage tiers (Standard 30 d → Glacier 90 d → Deep Archive 1 y → expiry).",
        tags={"cidadao/domain": "protection"},
    )
    def apply_s3_lifecycle():
        apply_s3_lifecycle_op()

    return apply_s3_lifecycle
