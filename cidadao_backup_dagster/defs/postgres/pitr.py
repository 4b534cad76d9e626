"""Point-in-time recovery, opt-in (POSTGRES_PITR=on): per PostgreSQL source a WAL archive asset run every 5 minutes,
a weekly base backup asset, and the restore-as-of-an-instant path `restore_postgres` takes when given a
`target_time`. Off by default: without the variable no asset, job, schedule or config field changes."""

import dagster as dg

from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.pitr import archive_wal, base_backup
from ...core.postgres.pitr.recovery import recover_data_directory, server_search
from ...core.postgres.pitr.server import DEFAULT_INCREMENTALS
from ...core.postgres.pitr.transfer import recover_rows_as_of as recover_rows_as_of_core
from ...core.postgres.pitr.transfer import restore_database_as_of
from ..audit import audited
from ..drills import recent_drill_checks
from ..failures import failure
from ..partitions import SnapshotConfig, guard_late, late_metadata
from ..recovery.config import restore_options, restore_tools, restored_metadata, rows_metadata
from ..schedules import latest_partition_schedule, source_asset_job
from ..settings import Settings
from ..sources import DomainDefs, PgBinding
from .pitr_checks import build_base_checks, build_wal_checks, number_setting
from .pitr_drill import build_pitr_drill

PITR_VARIABLE = "POSTGRES_PITR"
WAL_CRON_VARIABLE = "POSTGRES_WAL_ARCHIVE_CRON"
BASE_CRON_VARIABLE = "POSTGRES_BASE_BACKUP_CRON"
WAL_ASSET = "postgres_wal_archive"
BASE_ASSET = "postgres_base_backup"
DEFAULT_WAL_CRON = "*/5 * * * *"
DEFAULT_BASE_CRON = "0 1 * * 0"  # Sundays 01:00 UTC, before the weekly offsite dump at 02:00
INCREMENTALS_VARIABLE = "POSTGRES_BASE_INCREMENTALS"  # PostgreSQL >= 17: incremental bases between two full ones


def pitr_enabled(settings: Settings | None = None) -> bool:
    """Read when the definitions are built, like the sources file (default: the environment now)."""
    value = ((settings or Settings.from_environ()).get(PITR_VARIABLE) or "off").strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ConfigurationError(PITR_VARIABLE, f"{value!r} is neither on nor off", "set it to on or off (default)")


def pitr_for(binding: PgBinding) -> bool:
    """PITR for this source: `pitr: true` in the sources file (or component), or POSTGRES_PITR=on for all."""
    return binding.spec.pitr or pitr_enabled(binding.settings)


def _inputs(context, binding: PgBinding):
    """(source, connection, storage, the core's run options) or a failure that is not retried."""
    resources = context.resources
    source = binding.source(resources)
    try:
        return (
            source,
            source.connection(),
            binding.storage(resources).open(),
            {
                "settings": resources.backup_policy.settings(source),
                "encryption": resources.encryption.stage(),
                "encryption_info": resources.encryption.manifest_entry(),
                "variable": binding.spec.url_env,
                "say": context.log.info,
            },
        )
    except ConfigurationError as exc:
        raise failure(exc, allow_retries=False) from None


def _run_record(context, **more) -> dict:
    """The manifests' `run` entry."""
    return {"dagster_run_id": context.run.run_id, "asset": context.asset_key.to_user_string(), **more}


def _asset_args(binding: PgBinding, name: str, description: str, *resources: str) -> dict:
    """What the WAL archive and base backup assets share."""
    return {
        "key": binding.key(name),
        "group_name": binding.group("postgres"),
        "kinds": {"postgres", "s3"},
        "retry_policy": binding.retry_policy(60),
        "description": description,
        "tags": {"cidadao/domain": "postgres", **binding.tags},
        "required_resource_keys": {binding.source_key, binding.storage_key, "backup_policy", "encryption", *resources},
    }


def wal_metadata(result) -> dict[str, dg.MetadataValue]:
    meta = result.metadata()
    return {
        "start_lsn": dg.MetadataValue.text(meta["start_lsn"] or "slot"),
        "end_lsn": dg.MetadataValue.text(meta["end_lsn"]),
        "timeline": dg.MetadataValue.int(meta["timeline"]),
        "segments": dg.MetadataValue.int(meta["segments"]),
        "segment_names": dg.MetadataValue.json(meta["segment_names"]),
        "partial": dg.MetadataValue.text(meta["partial"] or ""),
        "raw_bytes": dg.MetadataValue.int(meta["raw_bytes"]),
        "stored_bytes": dg.MetadataValue.int(meta["stored_bytes"]),
        # What the RPO is measured from: every transaction committed before it is archived.
        "recoverable_until": dg.MetadataValue.text(meta["recoverable_until"]),
        # The achieved RPO: how far the newest recoverable instant lags behind the run's end (server clock). Until
        # the next run it grows by the schedule's interval.
        "rpo_seconds": dg.MetadataValue.float(meta["rpo_seconds"]),
        "finished_at": dg.MetadataValue.text(meta["finished_at"]),
        "last_xact_at": dg.MetadataValue.text(meta["last_xact_at"] or ""),
        "resumed_from": dg.MetadataValue.text(meta["resumed_from"] or ""),
        "slot": dg.MetadataValue.text(meta["slot"] or ""),
        "slot_retained_bytes": dg.MetadataValue.int(meta["slot_retained_bytes"] or 0),
        "duration_s": dg.MetadataValue.float(meta["seconds"]),
    }


def build_wal_asset(binding: PgBinding) -> dg.AssetsDefinition:
    description = (
        "WAL archive run: pg_receivewal from the source's physical slot up to the server's current position, "
        "resuming from the partial segment in storage; each WAL file compressed, encrypted when recipients are set, "
        "hashed, manifest last (postgres/<source>/wal/<timeline>/). Metadata: LSN range, segments, bytes, "
        "recoverable_until, the newest instant a restore can reach, and rpo_seconds, how far it lags behind the "
        "run's end."
    )

    # One archive run per source at a time (its own pool): never behind a long dump.
    @dg.asset(**_asset_args(binding, WAL_ASSET, description, "recovery"), pool=binding.named(WAL_ASSET))
    def _wal(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        source, conn, storage, options = _inputs(context, binding)
        # No audit record per run: every 5 minutes they would bury the trail; the run log and metadata suffice.
        try:
            result = archive_wal(
                conn, storage, source=source.series_name(), tmp_dir=context.resources.recovery.scratch_dir(),
                extra=_run_record(context), **options,
            )  # fmt: skip
        except (BackupError, ConfigurationError) as exc:
            raise failure(exc) from None
        return dg.MaterializeResult(metadata=wal_metadata(result))

    return _wal


def base_metadata(manifest) -> dict[str, dg.MetadataValue]:
    art, base = manifest.artifact, manifest.pitr_base
    return {
        "storage_uri": dg.MetadataValue.text(art.uri),
        "stored_bytes": dg.MetadataValue.int(art.stored_bytes),
        "raw_bytes": dg.MetadataValue.int(art.raw_bytes or 0),
        "sha256": dg.MetadataValue.text(art.stored_sha256),
        "encrypted": dg.MetadataValue.bool(art.encryption is not None),
        "start_lsn": dg.MetadataValue.text(base.start_lsn),
        "end_lsn": dg.MetadataValue.text(base.end_lsn),
        "timeline": dg.MetadataValue.int(base.timeline),
        "consistent_from": dg.MetadataValue.text(manifest.timings.snapshot_at),
        "server_version": dg.MetadataValue.text(manifest.source.server_version or ""),
        "base_kind": dg.MetadataValue.text(manifest.data["base"].get("kind", "full")),
        "chain_length": dg.MetadataValue.int(manifest.data["base"].get("chain_length", 1)),
        "parent": dg.MetadataValue.text(manifest.data["base"].get("parent") or ""),
    }


def build_base_asset(binding: PgBinding) -> dg.AssetsDefinition:
    incrementals = int(number_setting(binding.settings, INCREMENTALS_VARIABLE, DEFAULT_INCREMENTALS))
    description = (
        "Weekly base backup for point-in-time recovery: pg_basebackup -D - -Ft -X none streamed as one tar (with its "
        "backup_manifest) through the pipeline into postgres/<source>/base/. Usable with the WAL archive from its "
        "start LSN on. On PostgreSQL >= 17 with summarize_wal on, incremental (--incremental) chained to the "
        f"previous base, a full one after {INCREMENTALS_VARIABLE} incrementals."
    )

    # A whole-cluster read: in the source's pool, not at the same time as a dump of that server.
    @dg.asset(
        **_asset_args(binding, BASE_ASSET, description), partitions_def=binding.partitions.weekly, pool=binding.pool
    )
    def _base(context: dg.AssetExecutionContext, config: SnapshotConfig) -> dg.MaterializeResult:
        source, conn, storage, options = _inputs(context, binding)
        partition = context.partition_key
        what = "PostgreSQL base backups"
        lateness = guard_late(context, partition, "weekly", context.resources.backup_policy, config, what)
        with audited(context, storage, "base_backup", storage.uri(f"postgres/{source.series_name()}/base/")) as audit:
            try:
                manifest = base_backup(
                    conn, storage, source=source.series_name(), partition=partition, incrementals=incrementals,
                    extra=_run_record(context, **lateness.record()), **options,
                )  # fmt: skip
            except (BackupError, ConfigurationError) as exc:
                raise failure(exc) from None
            audit.update(artifact=manifest.artifact.uri, stored_sha256=manifest.stored_sha256)
        return dg.MaterializeResult(
            metadata={**base_metadata(manifest), **late_metadata(lateness)},
            data_version=dg.DataVersion(manifest.stored_sha256),
        )

    return _base


def build(binding: PgBinding) -> DomainDefs:
    wal, base = build_wal_asset(binding), build_base_asset(binding)
    checks, base_checks = build_wal_checks(binding, wal), build_base_checks(binding, base)
    drill, drill_checks, drill_job, drill_schedule = build_pitr_drill(binding)
    wal_job = source_asset_job(binding, "postgres_wal_archive_job", wal, "Archive the source's WAL up to now.")
    base_job = source_asset_job(binding, "postgres_base_backup_job", base, "Weekly base backup for PITR.")
    wal_cron = binding.settings.get(WAL_CRON_VARIABLE, DEFAULT_WAL_CRON)
    base_cron = binding.settings.get(BASE_CRON_VARIABLE, DEFAULT_BASE_CRON)
    return DomainDefs(
        defs=dg.Definitions(
            assets=[wal, base, drill],
            asset_checks=[*checks, *base_checks, *drill_checks],
            jobs=[wal_job, base_job, drill_job],
            schedules=[
                dg.ScheduleDefinition(
                    name=binding.named("postgres_wal_archive_schedule"),
                    job=wal_job,
                    cron_schedule=wal_cron,
                    execution_timezone="UTC",
                    default_status=dg.DefaultScheduleStatus.RUNNING,
                    description=f"WAL archive run, cron `{wal_cron}` (UTC): the RPO of point-in-time recovery.",
                ),
                latest_partition_schedule(
                    binding.named("postgres_base_backup_schedule"),
                    base_job,
                    binding.partitions.weekly,
                    base_cron,
                    "Weekly base backup of the week that just ended.",
                ),
                drill_schedule,
            ],
        ),
        # Also hourly on their own: if the WAL runs, base backups or drills stop, nothing inside them notices.
        health_checks=[*(c for c in [*checks, *base_checks] if _watched(c)), *recent_drill_checks(drill_checks)],
        storage_targets=[(binding.key(WAL_ASSET), binding.storage_key), (binding.key(BASE_ASSET), binding.storage_key)],
    )


def _watched(checks_def) -> bool:
    return any(k.name in ("wal_continuity", "recoverable_within_rpo", "base_freshness") for k in checks_def.check_keys)


# ------------------------------------------------------------------------------------------ restore_postgres


def recovery_metadata(plan, recovered_to) -> dict[str, dg.MetadataValue]:
    """Where the recovery started from (one full base, or a chain pg_combinebackup combined) and reached."""
    return {
        "recovered_to": dg.MetadataValue.text(recovered_to.isoformat() if recovered_to else ""),
        "base_backup": dg.MetadataValue.text(plan.base.partition),
        "base_chain": dg.MetadataValue.json([m.artifact.uri for m in plan.members]),
        "combined_members": dg.MetadataValue.int(len(plan.members) if len(plan.members) > 1 else 0),
    }


def _recovering(context, binding: PgBinding) -> tuple:
    """(storage, source, what every restore takes (restore_tools) and the server binaries' search)."""
    source = binding.source(context.resources)
    tools = {**restore_tools(context, source), "server_bin_dir": server_search(source.bin_dir)}
    return binding.storage(context.resources).open(), source, tools


def restore_as_of(context, config, binding: PgBinding, target_server, dbname: str) -> dict:
    """`restore_postgres` with a `target_time`: the database as of that instant, from base backup + WAL."""
    if config.output == "data_directory":
        return _data_directory(context, config, binding)
    storage, source, tools = _recovering(context, binding)
    result = restore_database_as_of(
        storage, source=source.series_name(), database=source.connection().dbname, target_time=config.target_time,
        server=target_server, dbname=dbname, **restore_options(config), **tools,
        worker_env=binding.settings.environ, run_id=context.run.run_id,
    )  # fmt: skip
    restored, plan = result.restore, result.plan
    context.log.info(f"Restored as of {config.target_time}: {restored.tables} tables, {restored.rows:,} rows")
    return {
        "target": dg.MetadataValue.text(restored.target),
        "target_time": dg.MetadataValue.text(config.target_time),
        **recovery_metadata(plan, result.recovered_to),
        "base_uri": dg.MetadataValue.text(plan.base.artifact.uri),
        "wal_files": dg.MetadataValue.int(len(plan.wal)),
        "duration_s": dg.MetadataValue.float(restored.total_seconds),
        **restored_metadata(restored),
    }


def recover_rows_as_of(context, config, binding: PgBinding, live) -> dict:
    """`recover_rows` with `as_of`: the rows as they were at that instant, from base backup + WAL."""
    storage, source, tools = _recovering(context, binding)
    result = recover_rows_as_of_core(
        storage, source=source.series_name(), target_time=config.as_of, live=live, table=config.table,
        where=config.where, scratch_server=context.resources.recovery.recover_scratch_server(live),
        dry_run=config.dry_run, on_conflict=config.on_conflict, sample_rows=config.sample_rows, **tools,
    )  # fmt: skip
    rows = result.rows
    done = (
        "would come back (dry run)" if rows.dry_run else f"came back ({rows.inserted} inserted, {rows.updated} updated)"
    )
    context.log.info(f"{rows.matched_in_backup} rows of {rows.table} matched as of {config.as_of}; {done}")
    return {
        "table": dg.MetadataValue.text(rows.table),
        "as_of": dg.MetadataValue.text(config.as_of),
        **recovery_metadata(result.plan, result.recovered_to),
        **rows_metadata(rows),
    }


def _data_directory(context, config, binding: PgBinding) -> dict:
    """`restore_postgres` with `output: data_directory`: the cluster as of `target_time`, as a data directory."""
    if not config.data_directory:
        raise ConfigurationError(
            "data_directory", "is empty and output is data_directory", "name an absent or empty folder"
        )
    storage, source, tools = _recovering(context, binding)
    tools["bin_dir"] = tools.pop("server_bin_dir")  # the recovery alone: no client programs
    path, plan, recovered_to = recover_data_directory(
        storage, source=source.series_name(), target_time=config.target_time,
        destination=config.data_directory, **tools,
    )  # fmt: skip
    return {
        "target": dg.MetadataValue.path(str(path)),
        "target_time": dg.MetadataValue.text(config.target_time),
        **recovery_metadata(plan, recovered_to),
        "server_major": dg.MetadataValue.int(plan.server_major),
        "wal_files": dg.MetadataValue.int(len(plan.wal)),
    }
