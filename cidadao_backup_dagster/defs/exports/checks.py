"""Checks on the exports. Integrity, row count, schema drift and size are per partition and run in the
export's own run; freshness judges the newest partition's manifest and also runs hourly on its own.

A run may export a range of partitions (a backfill, or the daily re-export of the last seven days). The
per-partition checks then report one evaluation per partition of the run, each under its own partition,
so the UI shows every day's result, and a failed blocking integrity check still fails the step."""

import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta

import dagster as dg

from ...core.artifacts.manifest import Manifest, read_manifest, utc_now, valid_manifests
from ...core.artifacts.storage import Storage
from ...core.errors import BackupError, ConfigurationError
from ...core.exports.export import drift_verdict, export_freshness, inspect_export, row_count_verdict
from ...core.monitoring.health import Verdict, size_verdict
from ..resources import BackupEncryption, BackupStorage, PostgresSource
from .assets import ExportAssetSpec, series_for
from .resources import ExportPolicy

# Per-partition asset checks are a Dagster preview feature, used deliberately (as for the backups).
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")

WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR


def _each_partition(
    context: dg.AssetCheckExecutionContext,
    asset_key: dg.AssetKey,
    check_name: str,
    severity: dg.AssetCheckSeverity,
    blocking: bool,
    evaluate: Callable[[str], Verdict],
) -> Iterator:
    """One result for a one-partition run; one evaluation per partition for a ranged run (an
    AssetCheckResult would be recorded without a partition there)."""
    if context.has_partition_key:
        verdict = evaluate(context.partition_key)
        yield dg.AssetCheckResult(
            passed=verdict.passed, severity=severity, description=verdict.description, metadata=verdict.metadata
        )
        return
    for key in context.partition_keys:
        verdict = evaluate(key)
        yield dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=check_name,
            passed=verdict.passed,
            severity=severity,
            description=verdict.description,
            metadata=verdict.metadata,
            partition=key,
            blocking=blocking,
        )
    yield dg.Output(None)  # the check's own output; the evaluations above carry the results


def _manifest_or_verdict(storage: Storage, series: str, partition: str) -> tuple[Manifest | None, Verdict | None]:
    try:
        manifest = read_manifest(storage, series, partition)
    except BackupError as exc:
        return None, Verdict(False, str(exc), {})
    if manifest is None:
        return None, Verdict(
            False, f"No manifest for {partition} under {storage.uri(series)}: this partition has no export", {}
        )
    return manifest, None


def _identities(encryption: BackupEncryption) -> list | Verdict | None:
    """The age identities for deep verification; None when none is configured (encrypted exports are then
    checked by their stored bytes only); a failed Verdict when BACKUP_AGE_IDENTITY_FILE is unreadable."""
    try:
        return encryption.identities()
    except ConfigurationError as exc:
        return Verdict(False, str(exc), {})


def _keys_or_none(identities: list | Verdict | None) -> list | None:
    return identities if isinstance(identities, list) else None


def build_export_checks(spec: ExportAssetSpec, asset: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    key = asset.key

    def opened(source: PostgresSource, storage: BackupStorage, policy: ExportPolicy) -> tuple[Storage, str]:
        return storage.open(), series_for(spec, source, policy)

    @dg.asset_check(
        asset=asset,
        name="integrity",
        blocking=True,
        partitions_def=spec.partitions_def,
        description="Object exists; size and SHA-256 match the manifest; the gzip stream inflates to its end "
        "(CRC-32); line and record counts match the manifest; every JSON line is an object with the "
        "manifest's columns (CSV: parses, header = the manifest's columns).",
    )
    def integrity(
        context: dg.AssetCheckExecutionContext,
        postgres_source: PostgresSource,
        backup_storage: BackupStorage,
        export_policy: ExportPolicy,
        encryption: BackupEncryption,
    ):
        storage, series = opened(postgres_source, backup_storage, export_policy)
        identities = _identities(encryption)

        def evaluate(partition: str) -> Verdict:
            manifest, missing = _manifest_or_verdict(storage, series, partition)
            if missing:
                return missing
            if isinstance(identities, Verdict) and manifest.data["artifact"].get("encryption"):
                return identities
            found = inspect_export(storage, manifest, identities=_keys_or_none(identities))
            meta = {
                "storage_uri": manifest.data["artifact"]["uri"],
                "stored_bytes": manifest.stored_bytes,
                "sha256": manifest.stored_sha256,
                "lines": found.lines,
                "records": found.records if found.records is not None else -1,
            }
            text = "; ".join(found.problems) or (
                "Encrypted: size and SHA-256 of the stored object match; set BACKUP_AGE_IDENTITY_FILE to also "
                "decrypt and check the content"
                if found.shallow
                else "Every byte re-read: hash, gzip CRC, lines and records match"
            )
            return Verdict(found.ok, text, meta)

        yield from _each_partition(context, key, "integrity", ERROR, True, evaluate)

    @dg.asset_check(
        asset=asset,
        name="row_count",
        partitions_def=spec.partitions_def,
        description="ERROR unless the records in the stored export equal the source's exact count(*) for the "
        "partition, taken in the export's own snapshot.",
    )
    def row_count(
        context: dg.AssetCheckExecutionContext,
        postgres_source: PostgresSource,
        backup_storage: BackupStorage,
        export_policy: ExportPolicy,
        encryption: BackupEncryption,
    ):
        storage, series = opened(postgres_source, backup_storage, export_policy)
        identities = _keys_or_none(_identities(encryption))

        def evaluate(partition: str) -> Verdict:
            manifest, missing = _manifest_or_verdict(storage, series, partition)
            if missing:
                return missing
            found = inspect_export(storage, manifest, parse=False, identities=identities)
            return row_count_verdict(manifest, found)

        yield from _each_partition(context, key, "row_count", ERROR, False, evaluate)

    @dg.asset_check(
        asset=asset,
        name="schema_drift",
        partitions_def=spec.partitions_def,
        description="WARN when a column was added, dropped or retyped since the previous partition's export "
        "(names and types are in each manifest).",
    )
    def schema_drift(
        context: dg.AssetCheckExecutionContext,
        postgres_source: PostgresSource,
        backup_storage: BackupStorage,
        export_policy: ExportPolicy,
    ):
        storage, series = opened(postgres_source, backup_storage, export_policy)

        def evaluate(partition: str) -> Verdict:
            manifest, missing = _manifest_or_verdict(storage, series, partition)
            if missing:
                return missing
            previous = valid_manifests(storage, series, before=partition, limit=1)
            return drift_verdict(manifest, previous[-1] if previous else None)

        yield from _each_partition(context, key, "schema_drift", WARN, False, evaluate)

    @dg.asset_check(
        asset=asset,
        name="size_deviation",
        partitions_def=spec.partitions_def,
        description="WARN when the stored size is more than 50% from the median of the previous valid exports "
        "(the strategy's 'backup_size_deviation > 50%').",
    )
    def size_deviation(
        context: dg.AssetCheckExecutionContext,
        postgres_source: PostgresSource,
        backup_storage: BackupStorage,
        export_policy: ExportPolicy,
    ):
        storage, series = opened(postgres_source, backup_storage, export_policy)

        def evaluate(partition: str) -> Verdict:
            manifest, missing = _manifest_or_verdict(storage, series, partition)
            if missing:
                return missing
            history = valid_manifests(storage, series, before=partition, limit=export_policy.size_history)
            verdict = size_verdict(
                manifest.stored_bytes,
                [m.stored_bytes for m in history],
                max_deviation=export_policy.max_size_deviation_pct / 100,
            )
            text = verdict.description.replace("backups", "exports")
            return Verdict(verdict.passed, text, verdict.metadata)

        yield from _each_partition(context, key, "size_deviation", WARN, False, evaluate)

    @dg.asset_check(
        asset=asset,
        name="encrypted",
        partitions_def=spec.partitions_def,
        description="ERROR when an export is stored unencrypted while CIDADAO_ENV=production (investigations hold "
        "citizens' personal data, as the backups do). Outside production an unencrypted export passes.",
    )
    def encrypted(
        context: dg.AssetCheckExecutionContext,
        postgres_source: PostgresSource,
        backup_storage: BackupStorage,
        export_policy: ExportPolicy,
        encryption: BackupEncryption,
    ):
        storage, series = opened(postgres_source, backup_storage, export_policy)

        def evaluate(partition: str) -> Verdict:
            manifest, missing = _manifest_or_verdict(storage, series, partition)
            if missing:
                return missing
            info = manifest.data["artifact"].get("encryption")
            if info:
                return Verdict(True, "age-encrypted", {"recipients": ", ".join(info.get("recipients", []))})
            if encryption.production:
                return Verdict(
                    False, "Stored UNENCRYPTED in production: set BACKUP_AGE_RECIPIENTS and re-run the export", {}
                )
            return Verdict(True, "Not encrypted (allowed outside production)", {})

        yield from _each_partition(context, key, "encrypted", ERROR, False, evaluate)

    @dg.asset_check(
        asset=asset,
        name="freshness",
        description="Judged from the manifest of the newest partition (backfilling an old one does not count): "
        "WARN when its snapshot is older than 48 h, ERROR past 7 days (the strategy's RPO for critical "
        "investigations); weekly: WARN past 8 days 6 h, ERROR past 15 days.",
    )
    def freshness(
        context: dg.AssetCheckExecutionContext,
        postgres_source: PostgresSource,
        backup_storage: BackupStorage,
        export_policy: ExportPolicy,
    ) -> dg.AssetCheckResult:
        try:
            storage, series = opened(postgres_source, backup_storage, export_policy)
        except ConfigurationError as exc:
            return dg.AssetCheckResult(passed=False, description=str(exc))
        verdict, severity = export_freshness(
            valid_manifests(storage, series, limit=1),
            utc_now(),
            timedelta(hours=getattr(export_policy, spec.warn_age_field)),
            timedelta(hours=getattr(export_policy, spec.error_age_field)),
        )
        return dg.AssetCheckResult(
            passed=verdict.passed,
            severity=WARN if severity == "WARN" else ERROR,
            description=verdict.description,
            metadata=verdict.metadata,
        )

    return [integrity, row_count, schema_drift, size_deviation, encrypted, freshness]
