"""Recovery jobs an on-call engineer launches from the Launchpad (or `dg launch --job <name> -c config.yaml`).

`restore_postgres`: the strategy's scenarios 1 (corruption) and 3 (complete loss).
`recover_rows`: scenario 2 (accidental DELETE).
"""

from datetime import UTC, datetime

import dagster as dg

from ...core.postgres.recover import recover_rows as recover_rows_core
from ...core.postgres.restore import restore_backup, select_backup
from ..op_jobs import recovery_job
from ..postgres import pitr
from ..postgres.assets import DAILY_SPEC, WEEKLY_SPEC, series_for
from ..postgres.on_demand import on_demand_series
from ..resources import PostgresSource
from ..sources import PgBinding
from .config import (
    BackupChoice,
    RecoverRowsAsOfConfig,
    RecoverRowsConfig,
    RestorePostgresAsOfConfig,
    RestorePostgresConfig,
    restore_options,
    restore_tools,
    restored_metadata,
    rows_metadata,
)


def _chosen_backup(config: BackupChoice, binding: PgBinding, resources):
    """(storage, manifest) of the backup the config names; refuses unknown or invalid ones."""
    if config.backup_set == "on_demand":
        storage = binding.storage(resources).open()
        series = on_demand_series(binding.source(resources))
    else:
        spec = WEEKLY_SPEC if config.backup_set == "offsite" else DAILY_SPEC
        storage, series = spec.storage(binding, resources).open(), series_for(spec, binding.source(resources))
    return storage, select_backup(storage, series, config.backup)


def picked(manifest) -> str:
    """What a restore or recovery picked, by what it holds: the label can be late, the snapshot time cannot."""
    late = " (labelled late)" if manifest.late else ""
    return f"backup {manifest.partition}{late}, snapshot taken {manifest.timings.snapshot_at}"


def build_restore_job(binding: PgBinding) -> dg.JobDefinition:
    return recovery_job(
        binding,
        "restore_postgres",
        description="Scenarios 1 and 3: restore a backup into a new (or, confirmed, replaced) database and verify it.",
        op_description="Fetch a backup, check its SHA-256, restore it with pg_restore --jobs into a staging database, "
        "verify every table's row count against the manifest, then swap it into place by rename (a replaced "
        "database is kept as <name>_replaced_<timestamp>); optionally run a post-restore command.",
        config_type=RestorePostgresAsOfConfig if pitr.pitr_for(binding) else RestorePostgresConfig,  # off: as before
        resource_keys={"recovery", "encryption"},
        action="restore",
        artifact_key="target",
        run=_restore,
    )


def _restore(context: dg.OpExecutionContext, config: RestorePostgresConfig, binding: PgBinding) -> dict:
    resources = context.resources
    postgres_source: PostgresSource = binding.source(resources)
    recovery = resources.recovery
    source = postgres_source.connection()
    server = recovery.server(config.target_server_url, source, "target_server_url")
    dbname = config.target_database or f"{source.dbname}_restored_{datetime.now(UTC):%Y%m%d_%H%M}"
    if getattr(config, "target_time", ""):  # base backup + WAL instead of a dump
        return pitr.restore_as_of(context, config, binding, server, dbname)
    storage, manifest = _chosen_backup(config, binding, resources)
    target = server.with_dbname(dbname).display()
    context.log.info(f"Restoring {picked(manifest)} ({config.backup_set}) to {target}")
    result = restore_backup(
        storage,
        manifest,
        server,
        dbname,
        **restore_options(config),
        **restore_tools(context, postgres_source),
        worker_env=binding.settings.environ,
        run_id=context.run.run_id,
    )
    context.log.info(f"Restore verified: {result.tables} tables, {result.rows:,} rows in {result.total_seconds:.1f} s")
    if result.replaced_database:
        context.log.warning(
            f"The previous {dbname} is kept as {result.replaced_database} (undo: rename it back). It still holds "
            f"data and disk space: DROP DATABASE {result.replaced_database} once the restore is accepted"
        )
    return {
        "target": dg.MetadataValue.text(result.target),
        "backup_partition": dg.MetadataValue.text(result.partition),
        "backup_snapshot_at": dg.MetadataValue.text(manifest.timings.snapshot_at),
        "backup_uri": dg.MetadataValue.text(result.backup_uri),
        "duration_s": dg.MetadataValue.float(result.total_seconds),
        "fetch_s": dg.MetadataValue.float(result.fetch_seconds),
        "restore_s": dg.MetadataValue.float(result.restore_seconds),
        "verify_s": dg.MetadataValue.float(result.verify_seconds),
        **restored_metadata(result),
    }


def build_recover_rows_job(binding: PgBinding) -> dg.JobDefinition:
    return recovery_job(
        binding,
        "recover_rows",
        description="Scenario 2 (accidental DELETE): bring rows of one table back from a backup. Dry run by default.",
        op_description="Restore a backup into a temporary database, select rows matching the filter, and copy them "
        "into the live table with ON CONFLICT DO NOTHING (or UPDATE). Dry run by default. The temporary database "
        "is dropped.",
        config_type=RecoverRowsAsOfConfig if pitr.pitr_for(binding) else RecoverRowsConfig,  # off: as before
        resource_keys={"recovery", "encryption"},
        action="recover_rows",
        artifact_key="table",
        run=_recover_rows,
    )


def _recover_rows(context: dg.OpExecutionContext, config: RecoverRowsConfig, binding: PgBinding) -> dict:
    resources = context.resources
    postgres_source: PostgresSource = binding.source(resources)
    recovery = resources.recovery
    live = postgres_source.connection()
    if getattr(config, "as_of", ""):  # base backup + WAL instead of a dump
        return pitr.recover_rows_as_of(context, config, binding, live)
    storage, manifest = _chosen_backup(config, binding, resources)
    context.log.info(f"Recovering rows of {config.table} from {picked(manifest)}")
    result = recover_rows_core(
        storage,
        manifest,
        live,
        config.table,
        config.where,
        scratch_server=recovery.recover_scratch_server(live),
        dry_run=config.dry_run,
        on_conflict=config.on_conflict,
        sample_rows=config.sample_rows,
        **restore_tools(context, postgres_source),
    )
    if result.dry_run:
        context.log.info(
            f"DRY RUN: {result.matched_in_backup} rows match in backup {result.partition}; {result.would_insert} are "
            f"missing from the live table and would come back; {result.already_present} are still there. "
            "Nothing was written. Set dry_run: false to restore them."
        )
    else:
        context.log.info(f"Recovered {result.inserted} rows into {result.table} (updated {result.updated})")
    return {
        "table": dg.MetadataValue.text(result.table),
        "backup_partition": dg.MetadataValue.text(result.partition),
        "backup_snapshot_at": dg.MetadataValue.text(manifest.timings.snapshot_at),
        **rows_metadata(result),
    }
