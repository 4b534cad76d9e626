"""Redis jobs: the hourly snapshot job and its schedule, and the recovery jobs an on-call engineer launches
from the Launchpad (strategy: Redis recovery scenario 1, cache invalidation; scenario 2, instance loss)."""

from typing import Literal

import dagster as dg
from pydantic import Field

from ...core.artifacts.layout import series_prefix
from ...core.errors import BackupError, ConfigurationError
from ...core.redis.backup import safe_name
from ...core.redis.flush import confirm_flush, flush_all, snapshot_before_flush
from ...core.redis.restore import restore_snapshot
from ...core.redis.snapshots import select_snapshot
from ..failures import failure
from ..op_jobs import optional_text, recovery_job
from ..resources import RedisSource
from ..schedules import latest_partition_schedule, source_asset_job
from ..sources import RedisBinding
from .assets import redis_series


def build_snapshot_job(binding: RedisBinding, asset: dg.AssetsDefinition):
    job = source_asset_job(
        binding,
        "redis_snapshot_job",
        asset,
        "Hourly Redis snapshot with its integrity, size, freshness and persistence checks.",
    )
    # By default at :05 past every hour, for the UTC hour that just ended.
    schedule = latest_partition_schedule(
        binding.named("redis_snapshot_schedule"),
        job,
        binding.partitions.hourly,
        binding.spec.snapshot_schedule,
        "Hourly snapshot of the UTC hour that just ended.",
    )
    return job, schedule


class RestoreRedisConfig(dg.Config):
    snapshot: str = Field(
        default="latest",
        description="Which snapshot: an hourly partition key (2026-11-24-13:00) or 'latest' for the newest valid one.",
    )
    source_name: str = Field(
        default="",
        description="Snapshot series to read (REDIS_SOURCE_NAME of the instance that was backed up). Empty = the "
        "configured one.",
    )
    target_url: str = Field(
        default="",
        description="Redis to restore into, redis://[user@]host:6379 or rediss://... (no password: set "
        "REDIS_TARGET_PASSWORD). Empty = REDIS_URL (e.g. the newly provisioned instance).",
    )
    if_target_not_empty: Literal["refuse", "merge", "flush"] = Field(
        default="refuse",
        description="When the target already holds keys: refuse (default); merge (keep its keys, overwrite "
        "same-named ones); flush (FLUSHALL first, needs confirm_target; the target is snapshotted into "
        "redis/<host_port>/pre-flush in backup storage first, and not flushed if that fails).",
    )
    confirm_target: str = Field(
        default="", description="With flush: repeat the target's name, host:port (e.g. redis.internal:6379)."
    )


class FlushRedisConfig(dg.Config):
    target_url: str = Field(
        default="",
        description="Redis to flush, redis://[user@]host:6379 (no password: REDIS_TARGET_PASSWORD). Empty = REDIS_URL.",
    )
    confirm_target: str = Field(
        description="Repeat the target's name, host:port (e.g. redis.internal:6379), to confirm FLUSHALL."
    )
    snapshot_first: bool = Field(
        default=True,
        description="Take and verify a snapshot of the target before FLUSHALL (redis/<host_port>/pre-flush/ in "
        "BACKUP_STORAGE_URL), so a flush of the wrong instance can be undone with restore_redis. No snapshot, "
        "no flush. Set false only for a pure cache nobody will want back.",
    )


def build_recovery_jobs(binding: RedisBinding) -> list[dg.JobDefinition]:
    """restore_redis and flush_redis_cache for one Redis source."""
    restore_redis = recovery_job(
        binding,
        "restore_redis",
        description="Redis scenario 2 (instance loss): restore a snapshot into a Redis (new, or confirmed flush) "
        "and verify key counts.",
        op_description="Pick a snapshot, check its SHA-256, load an RDB into a throwaway redis-server (a logical "
        "snapshot needs none) and copy every key to the target with DUMP/RESTORE pipelines; verify key counts per "
        "database.",
        config_type=RestoreRedisConfig,
        resource_keys={"encryption", "recovery"},
        action="restore",
        artifact_key="target",
        run=_restore,
    )
    flush_redis_cache = recovery_job(
        binding,
        "flush_redis_cache",
        description="Redis scenario 1 (cache invalidation): FLUSHALL, confirmed by repeating the target's name.",
        op_description="FLUSHALL on the target, only when confirm_target repeats its name (host:port), after a "
        "verified snapshot of it (snapshot_first).",
        config_type=FlushRedisConfig,
        resource_keys={"encryption"},
        action="flush",
        artifact_key="target",
        run=_flush,
    )
    return [restore_redis, flush_redis_cache]


def _restore(context, config: RestoreRedisConfig, binding: RedisBinding) -> dict:
    resources = context.resources
    redis_source: RedisSource = binding.source(resources)
    encryption, recovery = resources.encryption, resources.recovery
    target = redis_source.target(config.target_url)
    storage = binding.storage(resources).open()
    series = (
        series_prefix("redis", safe_name(config.source_name), "hourly")
        if config.source_name
        else redis_series(redis_source)
    )
    manifest = select_snapshot(storage, series, config.snapshot)
    flushing = config.if_target_not_empty == "flush"
    context.log.info(
        f"Restoring snapshot {manifest.dagster_partition} ({manifest.redis.format}) into {target.display()}"
    )
    result = restore_snapshot(
        storage,
        manifest,
        target,
        if_not_empty=config.if_target_not_empty,
        confirm=config.confirm_target,
        server_bin=redis_source.bin,
        tmp_dir=recovery.scratch_dir(),
        identities=encryption.identities(),
        # the pre-flush snapshot is encrypted like every other snapshot (read only when it will be taken)
        encryption=encryption.stage() if flushing else None,
        encryption_info=encryption.manifest_entry() if flushing else None,
        say=context.log.info,
    )
    if not result.ok:
        raise dg.Failure(
            f"Restored into {result.target} but key counts differ from the snapshot: {'; '.join(result.mismatches)}",
            allow_retries=False,
        )
    context.log.info(f"Restore verified: {result.keys:,} keys in {result.total_seconds:.1f} s")
    return {
        "target": dg.MetadataValue.text(result.target),
        "backup_partition": dg.MetadataValue.text(result.partition),
        "backup_uri": dg.MetadataValue.text(result.backup_uri),
        "format": dg.MetadataValue.text(result.format),
        "keys": dg.MetadataValue.int(result.keys),
        "keys_per_db": dg.MetadataValue.json(result.in_target),
        "expired_skipped": dg.MetadataValue.int(result.expired),
        "flushed_first": dg.MetadataValue.bool(result.flushed),
        "duration_s": dg.MetadataValue.float(result.total_seconds),
        "fetch_s": dg.MetadataValue.float(result.fetch_seconds),
        "load_s": dg.MetadataValue.float(result.load_seconds),
        "copy_s": dg.MetadataValue.float(result.copy_seconds),
        **optional_text("pre_flush_snapshot", result.pre_flush_snapshot),
    }


def _flush(context, config: FlushRedisConfig, binding: RedisBinding) -> dict:
    resources = context.resources
    redis_source: RedisSource = binding.source(resources)
    snapshot = None
    try:
        target = redis_source.target(config.target_url)
        confirm_flush(target, config.confirm_target)  # a wrong name refuses before anything, snapshot included
        if config.snapshot_first:
            encryption = resources.encryption
            snapshot = snapshot_before_flush(
                target, binding.storage(resources).open(), encryption=encryption.stage(),
                encryption_info=encryption.manifest_entry(), say=context.log.info,
            )  # fmt: skip
        before = flush_all(target, config.confirm_target)
    except (BackupError, ConfigurationError) as exc:
        raise failure(exc) from None
    total = sum(before.values())
    context.log.info(f"FLUSHALL on {target.display()}: {total:,} keys removed; the application repopulates the cache")
    return {
        "target": dg.MetadataValue.text(target.display()),
        "keys_removed": dg.MetadataValue.int(total),
        "keys_per_db_before": dg.MetadataValue.json({str(k): v for k, v in before.items()}),
        **optional_text("pre_flush_snapshot", snapshot.artifact.uri if snapshot else None),
    }
