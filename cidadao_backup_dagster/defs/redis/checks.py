"""Checks on the Redis snapshots and on the live server's own persistence.

Per partition, in the snapshot's own run: `integrity` (blocking) and `size_deviation`. Series-wide, also
hourly in backup_health_checks_job: `freshness` (from manifests), `persistence_config` and `last_save`
(from the live server: the strategy's redis.conf and its "Redis Persistence Disabled" alert)."""

import warnings
from datetime import timedelta

import dagster as dg

from ...core.artifacts.manifest import read_manifest, utc_now, valid_manifests
from ...core.errors import BackupError, ConfigurationError
from ...core.monitoring.health import freshness_verdict, size_verdict
from ...core.redis.backup import partition_segment
from ...core.redis.health import last_save_verdict, persistence_config_verdict, read_persistence
from ...core.redis.restore import verify_redis_artifact
from ..audit import audited
from ..resources import RedisSource
from ..sources import RedisBinding
from .assets import HOURLY, redis_series

warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")


def _integrity(context, binding: RedisBinding) -> dg.AssetCheckResult:
    redis_source = binding.source(context.resources)
    backup_storage = binding.storage(context.resources)
    encryption = context.resources.encryption
    storage, series = backup_storage.open(), redis_series(redis_source)
    partition = context.partition_key
    try:
        manifest = read_manifest(storage, series, partition_segment(partition))
    except BackupError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc))
    if manifest is None:
        return dg.AssetCheckResult(
            passed=False, description=f"No manifest for {partition} under {storage.uri(series)}: no snapshot exists"
        )
    try:
        identities = encryption.identities()
    except ConfigurationError as exc:  # an identity is configured but unreadable: say so, do not verify less
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(exc))
    with audited(context, storage, "verify", manifest.data["artifact"]["uri"]) as audit:
        result = verify_redis_artifact(storage, manifest, server_bin=redis_source.bin, identities=identities)
        audit.update(result="ok" if result.ok else "failed", problems=result.problems)
    return dg.AssetCheckResult(
        passed=result.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(result.problems) or "Every byte re-read and matched the manifest; the RDB checks out",
        metadata={
            "storage_uri": manifest.data["artifact"]["uri"],
            "stored_bytes": manifest.stored_bytes,
            "sha256": manifest.stored_sha256,
            **{k: v for k, v in result.details.items() if v is not None},
        },
    )


def _size_deviation(context, binding: RedisBinding) -> dg.AssetCheckResult:
    redis_source = binding.source(context.resources)
    backup_policy = context.resources.backup_policy
    backup_storage = binding.storage(context.resources)
    storage, series = backup_storage.open(), redis_series(redis_source)
    segment = partition_segment(context.partition_key)
    manifest = read_manifest(storage, series, segment)
    if manifest is None:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, description=f"No snapshot for {context.partition_key}"
        )
    history = [
        m.stored_bytes for m in valid_manifests(storage, series, before=segment, limit=backup_policy.size_history)
    ]
    verdict = size_verdict(manifest.stored_bytes, history, max_deviation=backup_policy.max_size_deviation_pct / 100)
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=verdict.description,
        metadata={**verdict.metadata, "keys": manifest.data["contents"]["keys_total"]},
    )


def _encrypted(context, binding: RedisBinding) -> dg.AssetCheckResult:
    redis_source = binding.source(context.resources)
    backup_storage = binding.storage(context.resources)
    encryption = context.resources.encryption
    storage, series = backup_storage.open(), redis_series(redis_source)
    manifest = read_manifest(storage, series, partition_segment(context.partition_key))
    if manifest is None:
        return dg.AssetCheckResult(passed=False, description=f"No snapshot for {context.partition_key}")
    info = manifest.data["artifact"].get("encryption")
    if info:
        return dg.AssetCheckResult(
            passed=True, description="age-encrypted", metadata={"recipients": ", ".join(info["recipients"])}
        )
    if encryption.production:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description="Stored UNENCRYPTED in production: set BACKUP_AGE_RECIPIENTS and re-run the snapshot",
        )
    return dg.AssetCheckResult(passed=True, description="Not encrypted (allowed outside production)")


def _freshness(context, binding: RedisBinding) -> dg.AssetCheckResult:
    redis_source = binding.source(context.resources)
    backup_storage = binding.storage(context.resources)
    try:
        storage = backup_storage.open()
    except ConfigurationError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc))
    series = redis_series(redis_source)
    max_age = timedelta(hours=redis_source.snapshot_max_age_hours)
    verdict = freshness_verdict(valid_manifests(storage, series), utc_now(), max_age)
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.description,
        metadata=verdict.metadata,
    )


def _persistence(redis_source: RedisSource):
    """(Persistence, None), or (None, a failed result naming the problem)."""
    try:
        return read_persistence(redis_source.endpoint()), None
    except (ConfigurationError, BackupError) as exc:
        return None, dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(exc))


def _persistence_config(context, binding: RedisBinding) -> dg.AssetCheckResult:
    redis_source = binding.source(context.resources)
    persistence, failed = _persistence(redis_source)
    if failed:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, description=failed.description)
    verdict = persistence_config_verdict(persistence)
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=verdict.description,
        metadata=verdict.metadata,
    )


def _last_save(context, binding: RedisBinding) -> dg.AssetCheckResult:
    redis_source = binding.source(context.resources)
    persistence, failed = _persistence(redis_source)
    if failed:
        return failed
    verdict = last_save_verdict(persistence.info, utc_now(), redis_source.max_last_save_age_s)
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.description,
        metadata=verdict.metadata,
    )


def build_snapshot_checks(binding: RedisBinding) -> tuple[list, list]:
    """(every check on one source's snapshot asset, the series-wide ones that also run hourly)."""

    @dg.asset_check(
        asset=binding.key("redis_snapshot"),
        name="integrity",
        blocking=True,
        partitions_def=HOURLY,
        description="Object exists; size and SHA-256 match the manifest; the zstd stream decodes to its end; the RDB's "
        "magic, version, EOF opcode and CRC64 are right and redis-check-rdb accepts it (when installed); a logical "
        "snapshot has its header, its end marker with matching counts, and every DUMP payload's CRC64.",
        required_resource_keys={binding.source_key, binding.storage_key, "encryption"},
    )
    def integrity(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return _integrity(context, binding)

    @dg.asset_check(
        asset=binding.key("redis_snapshot"),
        name="size_deviation",
        partitions_def=HOURLY,
        description="WARN when the stored size is more than 50% from the median of the previous valid snapshots "
        "(strategy: 'Backup Size Anomaly').",
        required_resource_keys={binding.source_key, "backup_policy", binding.storage_key},
    )
    def size_deviation(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return _size_deviation(context, binding)

    @dg.asset_check(
        asset=binding.key("redis_snapshot"),
        name="encrypted",
        partitions_def=HOURLY,
        description="ERROR when a snapshot is stored unencrypted while CIDADAO_ENV=production (LGPD: the cache holds "
        "citizens' personal data too). Outside production an unencrypted snapshot passes with a note.",
        required_resource_keys={binding.source_key, binding.storage_key, "encryption"},
    )
    def encrypted(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return _encrypted(context, binding)

    @dg.asset_check(
        asset=binding.key("redis_snapshot"),
        name="freshness",
        description="ERROR when the newest valid snapshot (by partition, from its manifest's snapshot time) is older "
        "than 2 h (REDIS_SNAPSHOT_MAX_AGE_H). Backfilling an old hour does not count.",
        required_resource_keys={binding.source_key, binding.storage_key},
    )
    def freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return _freshness(context, binding)

    @dg.asset_check(
        asset=binding.key("redis_snapshot"),
        name="persistence_config",
        description="WARN unless the live server runs AOF with appendfsync everysec or always and has RDB save rules "
        "(the strategy's redis.conf). Reads CONFIG GET; managed services that refuse it get a WARN saying so.",
        required_resource_keys={binding.source_key},
    )
    def persistence_config(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return _persistence_config(context, binding)

    @dg.asset_check(
        asset=binding.key("redis_snapshot"),
        name="last_save",
        description="ERROR when the live server has never completed an RDB save since it started (rdb_saves 0) "
        "while changes wait, whatever LASTSAVE says; when its last successful save (LASTSAVE) is older than 3600 s "
        "while changes wait; or when its last BGSAVE failed (strategy alert 'Redis Persistence Disabled', high).",
        required_resource_keys={binding.source_key},
    )
    def last_save(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return _last_save(context, binding)

    return [integrity, size_deviation, encrypted, freshness, persistence_config, last_save], [
        freshness,
        persistence_config,
        last_save,
    ]
