"""Hourly Redis snapshots as a time-partitioned asset: a point-in-time RDB over the replication protocol
(or the logical fallback), verified while it streams, stored beside a manifest written last."""

import dagster as dg

from ...core.artifacts.layout import series_prefix
from ...core.artifacts.manifest import Manifest
from ...core.errors import BackupError, ConfigurationError
from ...core.redis.backup import backup_redis, partition_segment, safe_name
from ..audit import audited
from ..backup_runs import log_progress, run_record
from ..failures import failure
from ..partitions import SnapshotConfig, guard_late, late_metadata
from ..resources import RedisSource
from ..sources import RedisBinding

# UTC hours since BACKUP_PARTITIONS_START. Keys look like 2026-11-24-13:00; storage uses 2026-11-24-1300.


def redis_series(source: RedisSource) -> str:
    return series_prefix("redis", safe_name(source.name), "hourly")


def snapshot_metadata(manifest: Manifest) -> dict[str, dg.MetadataValue]:
    art, contents, timings = manifest.artifact, manifest.redis, manifest.timings
    meta = {
        "storage_uri": dg.MetadataValue.text(art.uri),
        "format": dg.MetadataValue.text(contents.format),
        "stored_bytes": dg.MetadataValue.int(art.stored_bytes),
        "raw_bytes": dg.MetadataValue.int(art.raw_bytes or 0),
        "compression_ratio": dg.MetadataValue.float(art.compression_ratio),
        "sha256": dg.MetadataValue.text(art.stored_sha256),
        "encrypted": dg.MetadataValue.bool(art.encryption is not None),
        "keys": dg.MetadataValue.int(contents.keys_total),
        "keys_per_db": dg.MetadataValue.json(contents.keys_per_db),
        "duration_s": dg.MetadataValue.float(timings.total_seconds or 0.0),
        "mb_per_s": dg.MetadataValue.float(timings.raw_mb_per_s or 0.0),
        "snapshot_at": dg.MetadataValue.text(timings.snapshot_at),
        "source": dg.MetadataValue.text(manifest.source.url),
        "redis_version": dg.MetadataValue.text(manifest.source.redis_version or ""),
    }
    if contents.format == "rdb":
        meta["rdb_version"] = dg.MetadataValue.int(contents.rdb_version or 0)
        meta["crc64"] = dg.MetadataValue.text(contents.crc64 or "")
        meta["diskless_transfer"] = dg.MetadataValue.bool(bool(contents.diskless_transfer))
    return meta


def build_snapshot_asset(binding: RedisBinding) -> dg.AssetsDefinition:
    # One snapshot per Redis server at a time (each SYNC forks it): dagster.yaml's default pool limit is 1.
    @dg.asset(
        key=binding.key("redis_snapshot"),
        group_name=binding.group("redis"),
        partitions_def=binding.partitions.hourly,
        kinds={"redis", "s3"},
        pool=binding.pool,
        retry_policy=binding.retry_policy(60),
        required_resource_keys={*binding.resource_keys, "backup_policy", "encryption"},
        description=(
            "Hourly point-in-time snapshot of REDIS_URL: the RDB fetched over the replication protocol (REPLCONF + "
            "SYNC, as `redis-cli --rdb` does), its magic, version, EOF opcode and CRC64 checked while it streams "
            "through zstd and SHA-256 into BACKUP_STORAGE_URL. Servers that refuse SYNC get a logical snapshot "
            "(SCAN + DUMP + PTTL as RESTORE commands). The manifest.json beside it is written last."
        )
        + (f" Source `{binding.name}` ({binding.spec.url_env})." if binding.name else ""),
        tags={"cidadao/domain": "redis", **binding.tags},
    )
    def redis_snapshot(context: dg.AssetExecutionContext, config: SnapshotConfig) -> dg.MaterializeResult:
        return _snapshot(context, binding, config)

    return redis_snapshot


def _snapshot(context: dg.AssetExecutionContext, binding: RedisBinding, config: SnapshotConfig) -> dg.MaterializeResult:
    redis_source: RedisSource = binding.source(context.resources)
    backup_policy, encryption = context.resources.backup_policy, context.resources.encryption
    backup_storage = binding.storage(context.resources)
    try:
        endpoint = redis_source.endpoint()
        storage = backup_storage.open()
        settings = redis_source.settings(backup_policy.zstd_level)
        stage, encryption_info = encryption.stage(), encryption.manifest_entry()
    except ConfigurationError as exc:
        raise failure(exc, allow_retries=False) from None
    series = redis_series(redis_source)
    partition = context.partition_key
    context.log.info(
        f"Snapshotting {endpoint.display()} ({settings.mode} mode) into "
        f"{storage.uri(series + '/' + partition_segment(partition))}/"
    )

    with audited(context, storage, "backup", storage.uri(f"{series}/{partition_segment(partition)}/")) as audit:
        lateness = guard_late(context, partition, "hourly", backup_policy, config, "Redis snapshots")
        try:
            manifest = backup_redis(
                endpoint,
                storage,
                series=series,
                partition=partition,
                source_name=redis_source.name,
                settings=settings,
                encryption=stage,
                encryption_info=encryption_info,
                extra=run_record(context, lateness),
                on_progress=log_progress(context, "Snapshot", "received"),
                warn=context.log.warning,
            )
        except BackupError as exc:  # credentials/permissions, a missing bucket: a retry would fail the same way
            raise failure(exc) from None
        audit.update(
            artifact=manifest.artifact.uri,
            stored_sha256=manifest.stored_sha256,
            format=manifest.redis.format,
        )
    context.log.info(f"Snapshot complete: {manifest.redis.keys_total:,} keys, {manifest.artifact.uri}")
    return dg.MaterializeResult(
        metadata={**snapshot_metadata(manifest), **late_metadata(lateness)},
        data_version=dg.DataVersion(manifest.stored_sha256),
    )
