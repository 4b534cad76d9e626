"""Recovery jobs an on-call engineer launches from the Launchpad (or `dg launch --job <name> -c config.yaml`).

`restore_postgres`: the strategy's scenarios 1 (corruption) and 3 (complete loss).
`recover_rows`: scenario 2 (accidental DELETE).
"""

from datetime import UTC, datetime
from typing import Literal

import dagster as dg
from pydantic import Field

from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.recover import recover_rows as recover_rows_core
from ...core.postgres.restore import restore_backup, select_backup
from ..audit import audit_storage, audited
from ..failures import failure
from ..postgres import pitr
from ..postgres.assets import DAILY_SPEC, WEEKLY_SPEC, series_for
from ..postgres.on_demand import on_demand_series
from ..resources import PostgresSource
from ..sources import PgBinding


class BackupChoice(dg.Config):
    backup: str = Field(
        default="latest",
        description="Which backup: 'latest' (the newest snapshot), 'before:2026-11-24T10:00Z' (the newest snapshot "
        "taken before that instant, e.g. an accidental DELETE), or a partition key (daily: 2026-11-24; offsite: "
        "the week's Sunday, 2026-11-22; on_demand: its label, 2026-12-01T031500Z). Chosen by snapshot time.",
    )
    backup_set: Literal["daily", "offsite", "on_demand"] = Field(
        default="daily",
        description="daily = BACKUP_STORAGE_URL; offsite = the weekly copy in OFFSITE_STORAGE_URL; on_demand = "
        "postgres_on_demand_backup's.",
    )


class RestorePostgresConfig(BackupChoice):
    target_server_url: str = Field(
        default="",
        description="Server to restore onto, postgresql://user@host:5432 (no password: set RESTORE_TARGET_PASSWORD). "
        "Empty = the source server of DATABASE_URL.",
    )
    target_database: str = Field(
        default="", description="New database name. Empty = <source>_restored_<YYYYMMDD_HHMM> (UTC)."
    )
    replace_existing: bool = Field(
        default=False,
        description="Allow replacing a database that already holds data (also needs the confirmation). It is kept, "
        "renamed <name>_replaced_<UTC timestamp>, never dropped by the job: drop it yourself once you are sure.",
    )
    confirm_database_name: str = Field(
        default="", description="With replace_existing: repeat the target database's name to confirm."
    )
    jobs: int = Field(default=2, description="pg_restore --jobs.")
    no_owner: bool = Field(
        default=False, description="pg_restore --no-owner --no-acl, for a server without the source's roles."
    )
    post_restore_command: str = Field(
        default="",
        description="Shell command run after a verified restore, e.g. 'alembic upgrade head'. It sees only PATH, "
        "HOME, LANG (LC_ALL when set), DATABASE_URL = the restored database, and the variables in post_restore_env.",
    )
    post_restore_workdir: str = Field(default="", description="Working directory for the post-restore command.")
    post_restore_env: list[str] = Field(
        default=[],
        description="Names of worker environment variables to pass to the post-restore command as well (e.g. "
        "APP_ENV). Nothing else from the worker's environment reaches it: no tokens, no other passwords.",
    )


class RestorePostgresAsOfConfig(RestorePostgresConfig):
    target_time: str = Field(
        default="",
        description="Restore the database as it was at this instant (ISO 8601, UTC: 2026-11-24T17:59:00Z) from a base "
        "backup and the WAL archive (POSTGRES_PITR=on). Empty = restore the dump chosen by backup/backup_set.",
    )
    output: Literal["database", "data_directory"] = Field(
        default="database",
        description="With target_time: database = into target_database on the target server; data_directory = "
        "the whole cluster left as a data directory at `data_directory` on the worker, for a self-hosted server of "
        "the source's major version.",
    )
    data_directory: str = Field(default="", description="With output: data_directory: an absent or empty folder.")


class RecoverRowsConfig(BackupChoice):
    table: str = Field(default="investigations", description="Table to recover rows of (schema.table or table).")
    where: str = Field(
        description="SQL filter selecting the rows to bring back: one boolean expression (no ';', no comments), "
        "evaluated read-only on the backup's copy, e.g. \"created_at >= '2026-11-20' AND status = 'completed'\". "
        "Use TRUE for every row."
    )
    dry_run: bool = Field(default=True, description="Only report what would come back, with a sample; write nothing.")
    on_conflict: Literal["nothing", "update"] = Field(
        default="nothing",
        description="Rows whose key still exists in the live table: keep them (nothing) or overwrite them (update).",
    )
    sample_rows: int = Field(default=5, description="How many would-be-restored rows to show.")


class RecoverRowsAsOfConfig(RecoverRowsConfig):
    as_of: str = Field(
        default="",
        description="Take the rows as they were at this instant (ISO 8601, UTC: 2026-11-24T17:59:00Z) from a base "
        "backup and the WAL archive (POSTGRES_PITR=on). Empty = from the dump chosen by backup/backup_set.",
    )


def audit_output(audit: dict, output: dg.Output, artifact_key: str) -> None:
    """Copy an op's output metadata into its audit record."""
    meta = {k: v.value for k, v in output.metadata.items() if k != "sample"}
    audit.update(meta, artifact=meta[artifact_key])
    if meta.get("dry_run"):
        audit["result"] = "dry_run"


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
    as_of = pitr.pitr_for(binding)
    config_type = RestorePostgresAsOfConfig if as_of else RestorePostgresConfig  # off: as before

    @dg.op(
        name=binding.named("restore_postgres_op"),
        description="Fetch a backup, check its SHA-256, restore it with pg_restore --jobs into a staging database, "
        "verify every table's row count against the manifest, then swap it into place by rename (a replaced "
        "database is kept as <name>_replaced_<timestamp>); optionally run a post-restore command.",
        tags={"cidadao/domain": "recovery", **binding.tags},
        required_resource_keys={*binding.resource_keys, "recovery", "encryption"},
    )
    def restore_postgres_op(context: dg.OpExecutionContext, config: config_type) -> dg.Output:  # type: ignore[valid-type]
        with audited(context, audit_storage(binding.storage(context.resources)), "restore") as audit:
            output = _restore(context, config, binding)
            audit_output(audit, output, "target")
            return output

    @dg.job(
        name=binding.named("restore_postgres"),
        description="Scenarios 1 and 3: restore a backup into a new (or, confirmed, replaced) database and verify it."
        + (f" Source `{binding.name}`." if binding.name else ""),
        tags={"cidadao/domain": "recovery", **binding.tags},
    )
    def restore_postgres():
        restore_postgres_op()

    return restore_postgres


def _restore(context: dg.OpExecutionContext, config: RestorePostgresConfig, binding: PgBinding) -> dg.Output:
    resources = context.resources
    postgres_source: PostgresSource = binding.source(resources)
    recovery, encryption = resources.recovery, resources.encryption
    try:
        source = postgres_source.connection()
        server = recovery.server(config.target_server_url, source, "target_server_url")
        if getattr(config, "target_time", ""):  # base backup + WAL instead of a dump
            dbname = config.target_database or f"{source.dbname}_restored_{datetime.now(UTC):%Y%m%d_%H%M}"
            return pitr.restore_as_of(context, config, binding, server, dbname)
        storage, manifest = _chosen_backup(config, binding, resources)
        dbname = config.target_database or f"{source.dbname}_restored_{datetime.now(UTC):%Y%m%d_%H%M}"
        target = server.with_dbname(dbname).display()
        context.log.info(f"Restoring {picked(manifest)} ({config.backup_set}) to {target}")
        result = restore_backup(
            storage,
            manifest,
            server,
            dbname,
            replace=config.replace_existing,
            confirm=config.confirm_database_name,
            jobs=config.jobs,
            no_owner=config.no_owner,
            tmp_dir=recovery.scratch_dir(),
            bin_dir=postgres_source.bin_dir,
            post_restore_command=config.post_restore_command,
            post_restore_workdir=config.post_restore_workdir or None,
            post_restore_env=config.post_restore_env,
            worker_env=binding.settings.environ,
            identities=encryption.identities(),
            run_id=context.run.run_id,
            say=context.log.info,
        )
    except (BackupError, ConfigurationError) as exc:
        raise failure(exc, allow_retries=False) from None
    context.log.info(f"Restore verified: {result.tables} tables, {result.rows:,} rows in {result.total_seconds:.1f} s")
    if result.replaced_database:
        context.log.warning(
            f"The previous {dbname} is kept as {result.replaced_database} (undo: rename it back). It still holds "
            f"data and disk space: DROP DATABASE {result.replaced_database} once the restore is accepted"
        )
    return dg.Output(
        None,
        metadata={
            "target": dg.MetadataValue.text(result.target),
            "backup_partition": dg.MetadataValue.text(result.partition),
            "backup_snapshot_at": dg.MetadataValue.text(manifest.timings.snapshot_at),
            "backup_uri": dg.MetadataValue.text(result.backup_uri),
            "duration_s": dg.MetadataValue.float(result.total_seconds),
            "fetch_s": dg.MetadataValue.float(result.fetch_seconds),
            "restore_s": dg.MetadataValue.float(result.restore_seconds),
            "verify_s": dg.MetadataValue.float(result.verify_seconds),
            "tables": dg.MetadataValue.int(result.tables),
            "rows": dg.MetadataValue.int(result.rows),
            **(
                {"replaced_database": dg.MetadataValue.text(result.replaced_database)}
                if result.replaced_database
                else {}
            ),
        },
    )


def build_recover_rows_job(binding: PgBinding) -> dg.JobDefinition:
    config_type = RecoverRowsAsOfConfig if pitr.pitr_for(binding) else RecoverRowsConfig  # off: as before

    @dg.op(
        name=binding.named("recover_rows_op"),
        description="Restore a backup into a temporary database, select rows matching the filter, and copy them "
        "into the live table with ON CONFLICT DO NOTHING (or UPDATE). Dry run by default. The temporary database "
        "is dropped.",
        tags={"cidadao/domain": "recovery", **binding.tags},
        required_resource_keys={*binding.resource_keys, "recovery", "encryption"},
    )
    def recover_rows_op(context: dg.OpExecutionContext, config: config_type) -> dg.Output:  # type: ignore[valid-type]
        with audited(context, audit_storage(binding.storage(context.resources)), "recover_rows") as audit:
            output = _recover_rows(context, config, binding)
            audit_output(audit, output, "table")
            return output

    @dg.job(
        name=binding.named("recover_rows"),
        description="Scenario 2 (accidental DELETE): bring rows of one table back from a backup. Dry run by default."
        + (f" Source `{binding.name}`." if binding.name else ""),
        tags={"cidadao/domain": "recovery", **binding.tags},
    )
    def recover_rows():
        recover_rows_op()

    return recover_rows


def _recover_rows(context: dg.OpExecutionContext, config: RecoverRowsConfig, binding: PgBinding) -> dg.Output:
    resources = context.resources
    postgres_source: PostgresSource = binding.source(resources)
    recovery, encryption = resources.recovery, resources.encryption
    try:
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
            tmp_dir=recovery.scratch_dir(),
            bin_dir=postgres_source.bin_dir,
            identities=encryption.identities(),
            say=context.log.info,
        )
    except (BackupError, ConfigurationError) as exc:
        raise failure(exc, allow_retries=False) from None
    if result.dry_run:
        context.log.info(
            f"DRY RUN: {result.matched_in_backup} rows match in backup {result.partition}; {result.would_insert} are "
            f"missing from the live table and would come back; {result.already_present} are still there. "
            "Nothing was written. Set dry_run: false to restore them."
        )
    else:
        context.log.info(f"Recovered {result.inserted} rows into {result.table} (updated {result.updated})")
    return dg.Output(
        None,
        metadata={
            "table": dg.MetadataValue.text(result.table),
            "backup_partition": dg.MetadataValue.text(result.partition),
            "backup_snapshot_at": dg.MetadataValue.text(manifest.timings.snapshot_at),
            "dry_run": dg.MetadataValue.bool(result.dry_run),
            "matched_in_backup": dg.MetadataValue.int(result.matched_in_backup),
            "would_insert": dg.MetadataValue.int(result.would_insert),
            "already_present": dg.MetadataValue.int(result.already_present),
            "inserted": dg.MetadataValue.int(result.inserted),
            "updated": dg.MetadataValue.int(result.updated),
            "sample": dg.MetadataValue.json(result.sample),
            "duration_s": dg.MetadataValue.float(result.seconds),
        },
    )
