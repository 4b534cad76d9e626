"""An on-demand PostgreSQL backup ("before I run this migration"): a job of its own, writing to its own series
(`postgres/<source>/on_demand/<UTC time>/`) with its own retention, so nobody relabels a daily partition to
get one. The backup is verified (every byte re-read, `pg_restore --list`) in the same run."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from ...core.artifacts.layout import Series, series_prefix
from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.backup import backup_postgres
from ...core.postgres.verify import verify_pg_artifact
from ..audit import audited
from ..failures import failure
from ..op_jobs import op_job
from ..resources import PostgresSource
from ..sources import PgBinding
from .assets import backup_metadata

CADENCE = "on_demand"


def on_demand_series(source: PostgresSource) -> Series:
    return Series(series_prefix("postgres", source.series_name(), CADENCE))


class OnDemandConfig(dg.Config):
    reason: str = Field(
        default="",
        description="Why (e.g. 'before migration 0042'): kept in the manifest and the audit record",
    )


def build_on_demand_job(binding: PgBinding) -> dg.JobDefinition:
    @dg.op(
        name=binding.named("postgres_on_demand_backup_op"),
        required_resource_keys={*binding.resource_keys, "backup_policy", "encryption"},
        pool=binding.pool,  # never two dumps of one server at once, scheduled or not
        tags={"cidadao/domain": "postgres", **binding.tags},
    )
    def on_demand_op(context: dg.OpExecutionContext, config: OnDemandConfig) -> dg.Output:
        resources = context.resources
        source: PostgresSource = binding.source(resources)
        try:
            conn, storage = source.connection(), binding.storage(resources).open()
            settings = resources.backup_policy.settings(source)
            stage, info = resources.encryption.stage(), resources.encryption.manifest_entry()
            identities = resources.encryption.identities()
        except ConfigurationError as exc:
            raise failure(exc, allow_retries=False) from None
        series = on_demand_series(source)
        # A label that cannot lie: the moment the run started, to the second (the manifest has the snapshot time).
        label = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        with audited(context, storage, "backup", storage.uri(f"{series}/{label}/")) as audit:
            try:
                manifest = backup_postgres(
                    conn, storage, series=series, partition=label, settings=settings, encryption=stage,
                    encryption_info=info,
                    extra={"dagster_run_id": context.run.run_id, "on_demand": True, "reason": config.reason},
                )  # fmt: skip
            except BackupError as exc:
                raise failure(exc) from None
            verified = verify_pg_artifact(storage, manifest, pg_bin_dir=source.bin_dir, identities=identities)
            if not verified.ok:
                raise dg.Failure(f"The on-demand backup did not verify: {'; '.join(verified.problems)}")
            audit.update(artifact=manifest.artifact.uri, reason=config.reason)
        context.log.info(f"On-demand backup verified: {manifest.artifact.uri} ({label})")
        return dg.Output(None, metadata={**backup_metadata(manifest), "label": dg.MetadataValue.text(label)})

    return op_job(
        on_demand_op,
        binding.named("postgres_on_demand_backup"),
        "Back up the database now (e.g. before a migration), verified in the same run. Kept in its own series with "
        "its own retention (postgres_on_demand, 30 days); restore it with restore_postgres, backup_set: on_demand.",
        {"cidadao/domain": "postgres", **binding.tags},
    )
