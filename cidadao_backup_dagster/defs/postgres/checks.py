"""Checks on the PostgreSQL backups. Integrity and size are per partition and run in the backup's own run
(a materialization that skipped them would clear their result in the UI); freshness judges the whole series
from manifests and also runs hourly on its own, so a backup that stopped happening is noticed."""

from datetime import timedelta

import dagster as dg

from ...core.artifacts.manifest import Manifest
from ...core.artifacts.storage import Storage
from ...core.monitoring.health import Verdict
from ...core.postgres.verify import verify_pg_artifact
from ..artifact_checks import ArtifactSeries, SizeLimits, build_artifact_checks
from ..audit import audited
from ..sources import PgBinding
from .assets import BackupSpec, series_for

DESCRIPTIONS = {
    "integrity": "Object exists; size and SHA-256 match the manifest; the zstd stream decodes to its end; "
    "pg_restore --list reads the archive's table of contents.",
    "size_deviation": "WARN when the stored size is more than 50% from the median of the previous valid backups "
    "(strategy: 'Backup Size Anomaly'), or outside the expected range (BACKUP_EXPECTED_SIZE_MB).",
    "encrypted": "ERROR when a backup is stored unencrypted while CIDADAO_ENV=production (LGPD: backups hold "
    "citizens' personal data). Outside production an unencrypted backup passes with a note.",
    "freshness": "ERROR when the newest valid backup (by partition, from its manifest's snapshot time) is "
    "older than the limit: 48 h for daily backups (RPO 24 h). Backfilling an old day does not count.",
}


def backup_series(spec: BackupSpec, binding: PgBinding) -> ArtifactSeries:
    """How the checks read one source's backups of one cadence, and verify one."""

    def verify(context, storage: Storage, manifest: Manifest, identities) -> Verdict:
        bin_dir = binding.source(context.resources).bin_dir
        with audited(context, storage, "verify", manifest.artifact.uri) as audit:
            result = verify_pg_artifact(storage, manifest, pg_bin_dir=bin_dir, identities=identities)
            audit.update(result="ok" if result.ok else "failed", problems=result.problems)
        verified = (
            "Stored bytes match the manifest (encrypted; set BACKUP_AGE_IDENTITY_FILE to also decode the archive)"
            if "deep_verification" in result.details
            else "Every byte re-read and matched the manifest"
        )
        return Verdict(result.ok, "; ".join(result.problems) or verified, dict(result.details))

    def size_limits(resources) -> SizeLimits:
        policy = resources.backup_policy
        low, high = policy.expected_range()
        return SizeLimits(policy.size_history, policy.max_size_deviation_pct / 100, low, high)

    max_age_field = "daily_max_age_hours" if spec.cadence == "daily" else "weekly_max_age_hours"
    return ArtifactSeries(
        noun="backup",
        partitions_def=spec.partitions_def,
        needs=frozenset({binding.source_key, spec.storage_key(binding)}),
        open=lambda r: (spec.storage(binding, r).open(), series_for(spec, binding.source(r))),
        verify=verify,
        size_limits=size_limits,
        max_age=lambda r: timedelta(hours=getattr(r.backup_policy, max_age_field)),
        size_needs=frozenset({"backup_policy"}),
        freshness_needs=frozenset({"backup_policy"}),
        descriptions=DESCRIPTIONS,
    )


def build_backup_checks(spec: BackupSpec, binding: PgBinding) -> list[dg.AssetChecksDefinition]:
    return list(build_artifact_checks(binding.key(spec.asset_name), backup_series(spec, binding)).values())
