"""Critical data exports as time-partitioned assets: investigations as daily gzip JSON Lines, the agent
pool as a weekly gzip CSV snapshot. The work is in `core.exports`; this module only declares."""

import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial

import dagster as dg

from ...core.artifacts.manifest import Manifest
from ...core.artifacts.pipeline import Progress
from ...core.artifacts.storage import MiB
from ...core.errors import BackupError, ConfigurationError
from ...core.exports.export import export_partitions
from ...core.exports.spec import ExportSchemaError, ExportSpec, ResolvedTable, Window
from ..failures import failure
from ..partitions import SnapshotConfig, guard_late
from ..resources import BackupEncryption, BackupPolicy, BackupStorage, PostgresSource
from ..sources import PgBinding
from .resources import ExportPolicy

# BackfillPolicy is beta in Dagster 1.13, used deliberately: a backfilled month is one run and one snapshot.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")

# Investigations are dated by created_at; the first daily partition is the start of the strategy's year.
# Older rows (if a deployment has them) need an earlier start here. (Not BACKUP_PARTITIONS_START: this export
# reads rows by their date, and a new deployment's database already holds the earlier ones.)
DAILY_START = "2025-01-01"


@dataclass(frozen=True)
class ExportAssetSpec:
    """What differs between the two exports."""

    asset_name: str
    cadence: str  # path segment in storage: daily (rows of the partition's window) | weekly (a full snapshot)
    description: str
    partitions_def: dg.TimeWindowPartitionsDefinition | None = None  # set by `specs_for`

    @property
    def time_partitioned(self) -> bool:
        """Rows of the partition's window (daily) vs a full snapshot per partition (weekly)."""
        return self.cadence == "daily"

    @property
    def warn_age_field(self) -> str:  # the ExportPolicy field of its freshness limits
        return f"{self.cadence}_warn_age_hours"

    @property
    def error_age_field(self) -> str:
        return f"{self.cadence}_error_age_hours"

    def export_spec(self, policy: ExportPolicy) -> ExportSpec:
        return policy.investigations_spec() if self.time_partitioned else policy.agent_instances_spec()


INVESTIGATIONS = ExportAssetSpec(
    "investigations_json_export",
    "daily",
    "The day's investigations (UTC, by created_at) as gzip JSON Lines: one row_to_json object per line with "
    "id, query, status, results, metadata, created_at (INVESTIGATIONS_EXPORT_COLUMNS); timestamps ISO 8601 "
    "with offset, jsonb nested. Streamed with COPY into BACKUP_STORAGE_URL under exports/, with the exact "
    "row count from the same snapshot; manifest.json last. The strategy's 'last 7 days' is the union of the "
    "last seven partitions, and the schedule re-exports those seven every day so late updates land too.",
)
AGENT_INSTANCES = ExportAssetSpec(
    "agent_instances_csv_export",
    "weekly",
    "A full snapshot of agent_instances (the agent pool's state) as gzip CSV with a header, exactly what "
    "`COPY agent_instances TO STDOUT WITH CSV HEADER` writes; one per Sunday-to-Saturday week, taken when "
    "the week ends. Same storage, manifest and row-count path as the daily JSON export.",
)


def specs_for(binding: PgBinding) -> tuple[ExportAssetSpec, ExportAssetSpec]:
    """(investigations, agent_instances) with their partitions: daily from DAILY_START, weekly the backups'."""
    daily = dg.DailyPartitionsDefinition(start_date=DAILY_START, timezone="UTC")
    return (
        replace(INVESTIGATIONS, partitions_def=daily),
        replace(AGENT_INSTANCES, partitions_def=binding.partitions.weekly),
    )


def series_for(spec: ExportAssetSpec, source: PostgresSource, policy: ExportPolicy) -> str:
    return spec.export_spec(policy).series(source.connection().dbname, spec.cadence)


def windows_for(spec: ExportAssetSpec, keys: list[str]) -> list[Window]:
    """Daily: each key's [00:00, 24:00) UTC. Weekly: a whole-table snapshot, no window."""
    if not spec.time_partitioned:
        return [Window(key) for key in keys]
    out = []
    for key in keys:
        start = datetime.strptime(key, "%Y-%m-%d").replace(tzinfo=UTC)
        out.append(Window(key, start, start + timedelta(days=1)))
    return out


def export_metadata(manifest: Manifest) -> dict[str, dg.MetadataValue]:
    art, contents, timings = manifest.artifact, manifest.export, manifest.timings
    schema = dg.TableSchema(columns=[dg.TableColumn(c.name, c.type) for c in contents.columns])
    meta: dict[str, dg.MetadataValue] = {
        "storage_uri": dg.MetadataValue.text(art.uri),
        "dagster/row_count": dg.MetadataValue.int(contents.records),
        "dagster/column_schema": dg.MetadataValue.table_schema(schema),
        "source_rows": dg.MetadataValue.int(contents.source_rows or 0),
        "stored_bytes": dg.MetadataValue.int(art.stored_bytes),
        "raw_bytes": dg.MetadataValue.int(art.raw_bytes or 0),
        "compression_ratio": dg.MetadataValue.float(art.compression_ratio),
        "sha256": dg.MetadataValue.text(art.stored_sha256),
        "encrypted": dg.MetadataValue.bool(art.encryption is not None),
        "duration_s": dg.MetadataValue.float(timings.work_seconds or 0.0),
        "mb_per_s": dg.MetadataValue.float(timings.raw_mb_per_s or 0.0),
        "snapshot_at": dg.MetadataValue.text(timings.snapshot_at),
        "table": dg.MetadataValue.text(contents.table),
        "source": dg.MetadataValue.text(manifest.source.url),
    }
    if contents.window:
        window = contents.window
        meta["window"] = dg.MetadataValue.text(f"{window.column} in [{window.start}, {window.end})")
    return meta


def _late_records(context, spec: ExportAssetSpec, keys: list[str], backup_policy, config) -> dict[str, dict]:
    """Per key, the lateness record of a snapshot export (a full-table snapshot holds today's rows: old labels
    would lie, so late ones are refused unless allowed); nothing for a time-partitioned export."""
    if spec.time_partitioned:
        return {}
    return {
        key: guard_late(context, key, spec.cadence, backup_policy, config, "table snapshots").record() for key in keys
    }


def _log_resolved(context, table: ResolvedTable) -> None:
    names = ", ".join(c.name for c in table.columns)
    context.log.info(f"{table.qualified}: exporting columns {names}")
    if table.time_column is not None and not table.time_column_indexed:
        context.log.warning(
            f"{table.qualified}.{table.time_column.name} has no index: every daily partition scans the "
            f"whole table. Consider CREATE INDEX ON {table.qualified} ({table.time_column.name})."
        )


def _log_progress(context, key: str, p: Progress) -> None:
    context.log.info(
        f"{key}: {p.raw_bytes / MiB:,.0f} MiB read, {p.stored_bytes / MiB:,.0f} MiB stored, "
        f"{p.mb_per_s:,.1f} MiB/s after {p.elapsed:,.0f} s"
    )


def _log_done(context, ranged: bool, manifest: Manifest) -> None:
    context.log.info(
        f"{manifest.partition}: {manifest.export.records:,} rows, {manifest.stored_bytes:,} bytes -> "
        f"{manifest.artifact.uri}"
    )
    if ranged:
        context.add_asset_metadata(export_metadata(manifest), partition_key=manifest.partition)


def _result(manifests: list[Manifest]) -> dg.MaterializeResult:
    if len(manifests) == 1:
        (manifest,) = manifests
        return dg.MaterializeResult(
            metadata=export_metadata(manifest), data_version=dg.DataVersion(manifest.stored_sha256)
        )
    # A range: each partition got its own metadata as it was done; these figures describe the whole run.
    return dg.MaterializeResult(
        metadata={
            "partitions_in_run": dg.MetadataValue.int(len(manifests)),
            "rows_in_run": dg.MetadataValue.int(sum(m.export.records for m in manifests)),
            "stored_bytes_in_run": dg.MetadataValue.int(sum(m.stored_bytes for m in manifests)),
        }
    )


def build_export_asset(spec: ExportAssetSpec, binding: PgBinding) -> dg.AssetsDefinition:
    """One export asset; its keys and names carry no source prefix (it reads `postgres_source`)."""

    @dg.asset(
        name=spec.asset_name,
        group_name="exports",
        partitions_def=spec.partitions_def,
        kinds={"postgres", "json" if spec.time_partitioned else "csv"},
        # A backfill of any range is ONE run: one snapshot, one COPY per partition, per-partition results
        # (and `dg launch --partition-range` works, which needs single_run).
        backfill_policy=dg.BackfillPolicy.single_run(),
        # One run per export at a time (dagster.yaml: default pool limit 1, run granularity): two runs
        # rewriting the same partition could delete each other's new object.
        pool=spec.asset_name,
        retry_policy=binding.retry_policy(120),
        description=spec.description,
        tags={"cidadao/domain": "exports"},
    )
    def _export(
        context: dg.AssetExecutionContext,
        postgres_source: PostgresSource,
        backup_storage: BackupStorage,
        export_policy: ExportPolicy,
        encryption: BackupEncryption,
        backup_policy: BackupPolicy,
        config: SnapshotConfig,
    ) -> dg.MaterializeResult:
        try:
            conn = postgres_source.connection()
            storage = backup_storage.open()
            export_spec = spec.export_spec(export_policy)
            settings = export_policy.settings()
            stage, encryption_info = encryption.stage(), encryption.manifest_entry()
        except ConfigurationError as exc:
            raise failure(exc, allow_retries=False) from None
        series = export_spec.series(conn.dbname, spec.cadence)
        keys = list(context.partition_keys)
        late = _late_records(context, spec, keys, backup_policy, config)
        span = keys[0] if len(keys) == 1 else f"{keys[0]} .. {keys[-1]} ({len(keys)} partitions)"
        context.log.info(f"Exporting {export_spec.table} of {conn.display()} for {span} into {storage.uri(series)}/")
        try:
            manifests = export_partitions(
                conn,
                storage,
                export_spec,
                series=series,
                windows=windows_for(spec, keys),
                settings=settings,
                encryption=stage,
                encryption_info=encryption_info,
                extra={
                    "dagster_run_id": context.run.run_id,
                    "asset": spec.asset_name,
                    # a snapshot export allowed late on purpose says so (its snapshot_at is the real time)
                    **({"late_partitions": [k for k, r in late.items() if r["late"]]} if late else {}),
                },
                on_progress=partial(_log_progress, context),
                on_resolved=partial(_log_resolved, context),
                on_partition=partial(_log_done, context, len(keys) > 1),
            )
        # retrying cannot create a column, nor fix a setting
        except (ExportSchemaError, ConfigurationError) as exc:
            raise failure(exc, allow_retries=False) from None
        except BackupError as exc:  # a missing bucket or a denied write is not retried; a 5xx is
            raise failure(exc) from None
        return _result(manifests)

    return _export
