"""PostgreSQL backups as time-partitioned assets: a daily one, and a weekly copy to offsite storage."""

from dataclasses import dataclass

import dagster as dg

from ...core.artifacts.layout import Series, series_prefix
from ...core.artifacts.manifest import Manifest
from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.backup import backup_postgres
from ..audit import audited
from ..backup_runs import log_progress, run_record
from ..failures import failure
from ..partitions import SnapshotConfig, guard_late, late_metadata
from ..resources import BackupStorage, PostgresSource
from ..sources import PgBinding


@dataclass(frozen=True)
class BackupSpec:
    """What differs between the daily and the weekly offsite backup."""

    asset_name: str
    cadence: str  # path segment in storage: daily | weekly
    offsite: bool  # written to offsite_storage instead of backup_storage
    description: str
    job_description: str  # of its job, `<asset_name>_job`
    schedule_description: str  # of its schedule, `<asset_name>_schedule`
    partitions_def: dg.TimeWindowPartitionsDefinition | None = None  # per binding, from its settings

    def storage(self, binding: PgBinding, resources) -> BackupStorage:
        return getattr(resources, self.storage_key(binding))

    def storage_key(self, binding: PgBinding) -> str:
        return binding.offsite_key if self.offsite else binding.storage_key


DAILY_SPEC = BackupSpec(
    asset_name="postgres_daily_backup",
    cadence="daily",
    offsite=False,
    description=(
        "Daily `pg_dump --format=custom` of DATABASE_URL taken from an exported snapshot, zstd-compressed and "
        "streamed with SHA-256 into BACKUP_STORAGE_URL, with exact per-table row counts from the same snapshot. "
        "A partition is the UTC day that just ended; the manifest.json beside the dump is written last."
    ),
    job_description="Daily PostgreSQL backup with its integrity, size and freshness checks.",
    schedule_description="Daily backup of the UTC day that just ended.",
)
WEEKLY_SPEC = BackupSpec(
    asset_name="postgres_weekly_offsite_backup",
    cadence="weekly",
    offsite=True,
    description=(
        "Weekly backup (Sunday-to-Saturday partitions) written to OFFSITE_STORAGE_URL: the strategy's manual "
        "weekly backup to external S3-compatible storage, made the same way as the daily one."
    ),
    job_description="Weekly PostgreSQL backup to OFFSITE_STORAGE_URL with its checks.",
    schedule_description="Weekly offsite backup of the Sunday-to-Saturday week that just ended.",
)


def series_for(spec: BackupSpec, source: PostgresSource) -> Series:
    """`postgres/<source name>/<cadence>`, still reading the series keyed by the database name before."""
    legacy = series_prefix("postgres", source.legacy_series_name(), spec.cadence)
    return Series(series_prefix("postgres", source.series_name(), spec.cadence), (legacy,))


def backup_metadata(manifest: Manifest) -> dict[str, dg.MetadataValue]:
    art, contents, timings = manifest.artifact, manifest.postgres, manifest.timings
    return {
        "storage_uri": dg.MetadataValue.text(art.uri),
        "stored_bytes": dg.MetadataValue.int(art.stored_bytes),
        "raw_bytes": dg.MetadataValue.int(art.raw_bytes or 0),
        "compression_ratio": dg.MetadataValue.float(art.compression_ratio),
        "sha256": dg.MetadataValue.text(art.stored_sha256),
        "encrypted": dg.MetadataValue.bool(art.encryption is not None),
        "duration_s": dg.MetadataValue.float(timings.total_seconds or 0.0),
        "mb_per_s": dg.MetadataValue.float(timings.raw_mb_per_s or 0.0),
        "tables": dg.MetadataValue.int(contents.table_count),
        "rows": dg.MetadataValue.int(contents.rows_total),
        "row_counts": dg.MetadataValue.json(contents.tables),
        "snapshot_at": dg.MetadataValue.text(timings.snapshot_at),
        "source": dg.MetadataValue.text(manifest.source.url),
        "server_version": dg.MetadataValue.text(manifest.source.server_version or ""),
        "pg_dump_version": dg.MetadataValue.text(manifest.tools.pg_dump or ""),
        **({"pg_dump_path": dg.MetadataValue.path(manifest.tools.pg_dump_path)} if manifest.tools.pg_dump_path else {}),
    }


def build_backup_asset(spec: BackupSpec, binding: PgBinding) -> dg.AssetsDefinition:
    # Dumps on one server share its pool (dagster.yaml: one at a time); other servers are not held up.
    @dg.asset(
        key=binding.key(spec.asset_name),
        group_name=binding.group("postgres"),
        partitions_def=spec.partitions_def,
        kinds={"postgres", "s3"},
        pool=binding.pool,
        retry_policy=binding.retry_policy(120),
        description=spec.description + (f" Source `{binding.name}` ({binding.spec.url_env})." if binding.name else ""),
        tags={"cidadao/domain": "postgres", **binding.tags},
        required_resource_keys={*binding.resource_keys, "backup_policy", "encryption"},
    )
    def _backup(context: dg.AssetExecutionContext, config: SnapshotConfig) -> dg.MaterializeResult:
        resources = context.resources
        postgres_source: PostgresSource = binding.source(resources)
        backup_policy, encryption = resources.backup_policy, resources.encryption
        storage_res = spec.storage(binding, resources)
        try:
            conn = postgres_source.connection()
            storage = storage_res.open()
            settings = backup_policy.settings(postgres_source)
            stage, encryption_info = encryption.stage(), encryption.manifest_entry()
        except ConfigurationError as exc:
            raise failure(exc, allow_retries=False) from None
        series = series_for(spec, postgres_source)
        partition = context.partition_key
        context.log.info(f"Backing up {conn.display()} into {storage.uri(series + '/' + partition)}/")

        with audited(context, storage, "backup", storage.uri(f"{series}/{partition}/")) as audit:
            lateness = guard_late(context, partition, spec.cadence, backup_policy, config, "PostgreSQL backups")
            try:
                manifest = backup_postgres(
                    conn,
                    storage,
                    series=series,
                    partition=partition,
                    settings=settings,
                    encryption=stage,
                    encryption_info=encryption_info,
                    extra=run_record(context, lateness),
                    on_progress=log_progress(context, "pg_dump", "read"),
                )
            except BackupError as exc:
                raise failure(exc) from None
            audit.update(artifact=manifest.artifact.uri, stored_sha256=manifest.stored_sha256)
        context.log.info(f"Backup complete: {manifest.artifact.uri}")
        return dg.MaterializeResult(
            metadata={**backup_metadata(manifest), **late_metadata(lateness)},
            data_version=dg.DataVersion(manifest.stored_sha256),
        )

    return _backup
