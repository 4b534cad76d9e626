"""Checks on the exports. Integrity, row count, schema drift and size are per partition and run in the
export's own run; freshness judges the newest partition's manifest and also runs hourly on its own.

A run may export a range of partitions (a backfill, or the daily re-export of the last seven days). The
per-partition checks then report one evaluation per partition of the run (see defs/artifact_checks.py)."""

from datetime import timedelta

import dagster as dg

from ...core.artifacts.manifest import Manifest, utc_now, valid_manifests
from ...core.artifacts.storage import Storage
from ...core.exports.health import drift_verdict, export_freshness, row_count_verdict
from ...core.exports.inspect import inspect_export
from ...core.monitoring.health import Verdict
from ..artifact_checks import (
    ERROR,
    WARN,
    ArtifactSeries,
    SizeLimits,
    build_artifact_checks,
    identities_or_verdict,
    partition_check,
)
from .assets import ExportAssetSpec, series_for

RESOURCES = frozenset({"postgres_source", "backup_storage", "export_policy"})

DESCRIPTIONS = {
    "integrity": "Object exists; size and SHA-256 match the manifest; the gzip stream inflates to its end "
    "(CRC-32); line and record counts match the manifest; every JSON line is an object with the "
    "manifest's columns (CSV: parses, header = the manifest's columns).",
    "row_count": "ERROR unless the records in the stored export equal the source's exact count(*) for the "
    "partition, taken in the export's own snapshot.",
    "schema_drift": "WARN when a column was added, dropped or retyped since the previous partition's export "
    "(names and types are in each manifest).",
    "size_deviation": "WARN when the stored size is more than 50% from the median of the previous valid exports "
    "(the strategy's 'backup_size_deviation > 50%').",
    "encrypted": "ERROR when an export is stored unencrypted while CIDADAO_ENV=production (investigations hold "
    "citizens' personal data, as the backups do). Outside production an unencrypted export passes.",
    "freshness": "Judged from the manifest of the newest partition (backfilling an old one does not count): "
    "WARN when its snapshot is older than 48 h, ERROR past 7 days (the strategy's RPO for critical "
    "investigations); weekly: WARN past 8 days 6 h, ERROR past 15 days.",
}


def _verify(_context, storage: Storage, manifest: Manifest, identities) -> Verdict:
    found = inspect_export(storage, manifest, identities=identities)
    text = "; ".join(found.problems) or (
        "Encrypted: size and SHA-256 of the stored object match; set BACKUP_AGE_IDENTITY_FILE to also "
        "decrypt and check the content"
        if found.shallow
        else "Every byte re-read: hash, gzip CRC, lines and records match"
    )
    records = found.records if found.records is not None else -1
    return Verdict(found.ok, text, {"lines": found.lines, "records": records})


def _row_count(context, storage: Storage, _prefix: str, manifest: Manifest) -> Verdict:
    identities, _unreadable = identities_or_verdict(context.resources.encryption)
    return row_count_verdict(manifest, inspect_export(storage, manifest, parse=False, identities=identities))


def _schema_drift(_context, storage: Storage, prefix: str, manifest: Manifest) -> Verdict:
    previous = valid_manifests(storage, prefix, before=manifest.partition, limit=1)
    return drift_verdict(manifest, previous[-1] if previous else None)


def export_series(spec: ExportAssetSpec) -> ArtifactSeries:
    """How the checks read one export's series, and verify one artifact."""

    def open_series(resources) -> tuple[Storage, str]:
        return resources.backup_storage.open(), series_for(spec, resources.postgres_source, resources.export_policy)

    def freshness(resources, storage: Storage, prefix: str) -> tuple[Verdict, str]:
        policy = resources.export_policy
        warn_after = timedelta(hours=getattr(policy, spec.warn_age_field))
        error_after = timedelta(hours=getattr(policy, spec.error_age_field))
        return export_freshness(valid_manifests(storage, prefix, limit=1), utc_now(), warn_after, error_after)

    def size_limits(resources) -> SizeLimits:
        policy = resources.export_policy
        return SizeLimits(policy.size_history, policy.max_size_deviation_pct / 100)

    return ArtifactSeries(
        noun="export",
        partitions_def=spec.partitions_def,
        needs=RESOURCES,
        open=open_series,
        verify=_verify,
        size_limits=size_limits,
        freshness=freshness,
        descriptions=DESCRIPTIONS,
    )


def build_export_checks(spec: ExportAssetSpec, asset: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    series = export_series(spec)
    checks = build_artifact_checks(asset, series)
    encryption = frozenset({"encryption"})
    row_count = partition_check(asset, series, "row_count", _row_count, severity=ERROR, needs=encryption)
    schema_drift = partition_check(asset, series, "schema_drift", _schema_drift, severity=WARN)
    named = {**checks, "row_count": row_count, "schema_drift": schema_drift}
    order = ("integrity", "row_count", "schema_drift", "size_deviation", "encrypted", "freshness")
    return [named[name] for name in order]
