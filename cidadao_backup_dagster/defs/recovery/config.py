"""Run config of the PostgreSQL recovery jobs (`restore_postgres`, `recover_rows`), the restore options they
pass on, and the metadata they report, as dumps or (with PITR) base backup + WAL alike."""

from typing import Literal

import dagster as dg
from pydantic import Field

from ..op_jobs import optional_text


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


def restore_options(config: RestorePostgresConfig) -> dict:
    """What `restore_postgres` passes to a restore, from a dump or from base backup + WAL alike: replacing a
    database, pg_restore's options and the post-restore command."""
    return {
        "replace": config.replace_existing,
        "confirm": config.confirm_database_name,
        "jobs": config.jobs,
        "no_owner": config.no_owner,
        "post_restore_command": config.post_restore_command,
        "post_restore_workdir": config.post_restore_workdir or None,
        "post_restore_env": config.post_restore_env,
    }


def restore_tools(context, postgres_source) -> dict:
    """What every PostgreSQL restore works with: the scratch folder, the client programs (pg_restore...), the age
    identities that decrypt, and the run's log."""
    return {
        "tmp_dir": context.resources.recovery.scratch_dir(),
        "bin_dir": postgres_source.bin_dir,
        "identities": context.resources.encryption.identities(),
        "say": context.log.info,
    }


def restored_metadata(result) -> dict[str, dg.MetadataValue]:
    """A restored database's tables and rows (verified against the manifest) and the database it replaced."""
    return {
        "tables": dg.MetadataValue.int(result.tables),
        "rows": dg.MetadataValue.int(result.rows),
        **optional_text("replaced_database", result.replaced_database),
    }


def rows_metadata(result) -> dict[str, dg.MetadataValue]:
    """What `recover_rows` found in the backup and brought back (or, dry run, would)."""
    return {
        "dry_run": dg.MetadataValue.bool(result.dry_run),
        "matched_in_backup": dg.MetadataValue.int(result.matched_in_backup),
        "would_insert": dg.MetadataValue.int(result.would_insert),
        "already_present": dg.MetadataValue.int(result.already_present),
        "inserted": dg.MetadataValue.int(result.inserted),
        "updated": dg.MetadataValue.int(result.updated),
        "sample": dg.MetadataValue.json(result.sample),
        "duration_s": dg.MetadataValue.float(result.seconds),
    }
