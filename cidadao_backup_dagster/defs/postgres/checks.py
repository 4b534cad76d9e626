"""Checks on the PostgreSQL backups. Integrity and size are per partition and run in the backup's own run
(a materialization that skipped them would clear their result in the UI); freshness judges the whole series
from manifests and also runs hourly on its own, so a backup that stopped happening is noticed."""

import warnings
from datetime import timedelta

import dagster as dg

from ...core.artifacts.manifest import read_manifest, utc_now, valid_manifests
from ...core.errors import BackupError, ConfigurationError
from ...core.monitoring.health import freshness_verdict, size_verdict
from ...core.postgres.verify import verify_pg_artifact
from ..audit import audited
from ..sources import PgBinding
from .assets import BackupSpec, series_for

# Per-partition asset checks are a Dagster preview feature, used deliberately: integrity and size are
# properties of one partition's backup, and the UI shows their results per partition.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")


def build_backup_checks(spec: BackupSpec, binding: PgBinding) -> list[dg.AssetChecksDefinition]:
    asset = binding.key(spec.asset_name)
    needs = {binding.source_key, spec.storage_key(binding)}

    def _open(resources):
        return spec.storage(binding, resources).open(), series_for(spec, binding.source(resources))

    @dg.asset_check(
        asset=asset,
        name="integrity",
        required_resource_keys={*needs, "encryption"},
        blocking=True,
        partitions_def=spec.partitions_def,
        description="Object exists; size and SHA-256 match the manifest; the zstd stream decodes to its end; "
        "pg_restore --list reads the archive's table of contents.",
    )
    def integrity(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        resources = context.resources
        storage, series = _open(resources)
        partition = context.partition_key
        try:
            manifest = read_manifest(storage, series, partition)
        except BackupError as exc:
            return dg.AssetCheckResult(passed=False, description=str(exc))
        if manifest is None:
            return dg.AssetCheckResult(
                passed=False, description=f"No manifest for {partition} under {storage.uri(series)}: no backup exists"
            )
        with audited(context, storage, "verify", manifest.data["artifact"]["uri"]) as audit:
            result = verify_pg_artifact(
                storage,
                manifest,
                pg_bin_dir=binding.source(resources).bin_dir,
                identities=resources.encryption.identities(),
            )
            audit.update(result="ok" if result.ok else "failed", problems=result.problems)
        verified = (
            "Stored bytes match the manifest (encrypted; set BACKUP_AGE_IDENTITY_FILE to also decode the archive)"
            if "deep_verification" in result.details
            else "Every byte re-read and matched the manifest"
        )
        return dg.AssetCheckResult(
            passed=result.ok,
            severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(result.problems) or verified,
            metadata={
                "storage_uri": manifest.data["artifact"]["uri"],
                "stored_bytes": manifest.stored_bytes,
                "sha256": manifest.stored_sha256,
                **result.details,
            },
        )

    @dg.asset_check(
        asset=asset,
        name="size_deviation",
        required_resource_keys={*needs, "backup_policy"},
        partitions_def=spec.partitions_def,
        description="WARN when the stored size is more than 50% from the median of the previous valid backups "
        "(strategy: 'Backup Size Anomaly'), or outside the expected range (BACKUP_EXPECTED_SIZE_MB).",
    )
    def size_deviation(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        resources = context.resources
        storage, series = _open(resources)
        partition = context.partition_key
        manifest = read_manifest(storage, series, partition)
        if manifest is None:
            return dg.AssetCheckResult(
                passed=False, severity=dg.AssetCheckSeverity.WARN, description=f"No backup for {partition}"
            )
        history = [m.stored_bytes for m in valid_manifests(storage, series, before=partition)]
        backup_policy = resources.backup_policy
        low, high = backup_policy.expected_range()
        verdict = size_verdict(
            manifest.stored_bytes,
            history[-backup_policy.size_history :],
            max_deviation=backup_policy.max_size_deviation_pct / 100,
            expected_min=low,
            expected_max=high,
        )
        return dg.AssetCheckResult(
            passed=verdict.passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=verdict.description,
            metadata=verdict.metadata,
        )

    @dg.asset_check(
        asset=asset,
        name="encrypted",
        required_resource_keys={*needs, "encryption"},
        partitions_def=spec.partitions_def,
        description="ERROR when a backup is stored unencrypted while CIDADAO_ENV=production (LGPD: backups hold "
        "citizens' personal data). Outside production an unencrypted backup passes with a note.",
    )
    def encrypted(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        resources = context.resources
        storage, series = _open(resources)
        manifest = read_manifest(storage, series, context.partition_key)
        if manifest is None:
            return dg.AssetCheckResult(passed=False, description=f"No backup for {context.partition_key}")
        info = manifest.data["artifact"].get("encryption")
        if info:
            return dg.AssetCheckResult(
                passed=True, description="age-encrypted", metadata={"recipients": ", ".join(info["recipients"])}
            )
        if resources.encryption.production:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description="Stored UNENCRYPTED in production: set BACKUP_AGE_RECIPIENTS and re-run the backup",
            )
        return dg.AssetCheckResult(passed=True, description="Not encrypted (allowed outside production)")

    max_age_field = "daily_max_age_hours" if spec.cadence == "daily" else "weekly_max_age_hours"

    @dg.asset_check(
        asset=asset,
        name="freshness",
        required_resource_keys={*needs, "backup_policy"},
        description="ERROR when the newest valid backup (by partition, from its manifest's snapshot time) is "
        "older than the limit: 48 h for daily backups (RPO 24 h). Backfilling an old day does not count.",
    )
    def freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        resources = context.resources
        try:
            storage, series = _open(resources)
        except ConfigurationError as exc:
            return dg.AssetCheckResult(passed=False, description=str(exc))
        max_age = timedelta(hours=getattr(resources.backup_policy, max_age_field))
        verdict = freshness_verdict(valid_manifests(storage, series), utc_now(), max_age)
        return dg.AssetCheckResult(
            passed=verdict.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=verdict.description,
            metadata=verdict.metadata,
        )

    return [integrity, size_deviation, encrypted, freshness]
