"""Checks on the Redis snapshots and on the live server's own persistence.

Per partition, in the snapshot's own run: `integrity` (blocking) and `size_deviation`. Series-wide, also
hourly in backup_health_checks_job: `freshness` (from manifests), `persistence_config` and `last_save`
(from the live server: the strategy's redis.conf and its "Redis Persistence Disabled" alert)."""

from datetime import timedelta

import dagster as dg

from ...core.artifacts.manifest import Manifest, utc_now
from ...core.artifacts.storage import Storage
from ...core.errors import BackupError, ConfigurationError
from ...core.monitoring.health import Verdict
from ...core.redis.backup import partition_segment
from ...core.redis.health import last_save_verdict, persistence_config_verdict, read_persistence
from ...core.redis.verify import verify_redis_artifact
from ..artifact_checks import ERROR, WARN, ArtifactSeries, SizeLimits, build_artifact_checks, check_result
from ..audit import audited
from ..resources import RedisSource
from ..sources import RedisBinding
from .assets import redis_series

SNAPSHOT_DESCRIPTIONS = {
    "integrity": "Object exists; size and SHA-256 match the manifest; the zstd stream decodes to its end; the RDB's "
    "magic, version, EOF opcode and CRC64 are right and redis-check-rdb accepts it (when installed); a logical "
    "snapshot has its header, its end marker with matching counts, and every DUMP payload's CRC64.",
    "size_deviation": "WARN when the stored size is more than 50% from the median of the previous valid snapshots "
    "(strategy: 'Backup Size Anomaly').",
    "encrypted": "ERROR when a snapshot is stored unencrypted while CIDADAO_ENV=production (LGPD: the cache holds "
    "citizens' personal data too). Outside production an unencrypted snapshot passes with a note.",
    "freshness": "ERROR when the newest valid snapshot (by partition, from its manifest's snapshot time) is older "
    "than REDIS_SNAPSHOT_MAX_AGE_H hours (2 by default, the strategy's). Backfilling an old hour does not count.",
}


def snapshot_series(binding: RedisBinding) -> ArtifactSeries:
    """How the checks read one Redis source's snapshots, and verify one."""

    def verify(context, storage: Storage, manifest: Manifest, identities) -> Verdict:
        server_bin = binding.source(context.resources).bin
        with audited(context, storage, "verify", manifest.artifact.uri) as audit:
            result = verify_redis_artifact(storage, manifest, server_bin=server_bin, identities=identities)
            audit.update(result="ok" if result.ok else "failed", problems=result.problems)
        text = "; ".join(result.problems) or "Every byte re-read and matched the manifest; the RDB checks out"
        return Verdict(result.ok, text, {k: v for k, v in result.details.items() if v is not None})

    def size_limits(resources) -> SizeLimits:
        policy = resources.backup_policy
        return SizeLimits(policy.size_history, policy.max_size_deviation_pct / 100)

    return ArtifactSeries(
        noun="snapshot",
        partitions_def=binding.partitions.hourly,
        needs=frozenset({binding.source_key, binding.storage_key}),
        open=lambda r: (binding.storage(r).open(), redis_series(binding.source(r))),
        verify=verify,
        size_limits=size_limits,
        max_age=lambda r: timedelta(hours=binding.source(r).snapshot_max_age_hours),
        segment=partition_segment,
        size_metadata=lambda m: {"keys": m.redis.keys_total},
        size_needs=frozenset({"backup_policy"}),
        descriptions=SNAPSHOT_DESCRIPTIONS,
    )


def _persistence(redis_source: RedisSource):
    """(Persistence, None), or (None, a failed result naming the problem)."""
    try:
        return read_persistence(redis_source.endpoint()), None
    except (ConfigurationError, BackupError) as exc:
        return None, dg.AssetCheckResult(passed=False, severity=ERROR, description=str(exc))


def _persistence_config(context, binding: RedisBinding) -> dg.AssetCheckResult:
    redis_source = binding.source(context.resources)
    persistence, failed = _persistence(redis_source)
    if failed:
        return dg.AssetCheckResult(passed=False, severity=WARN, description=failed.description)
    return check_result(persistence_config_verdict(persistence), WARN)


def _last_save(context, binding: RedisBinding) -> dg.AssetCheckResult:
    redis_source = binding.source(context.resources)
    persistence, failed = _persistence(redis_source)
    if failed:
        return failed
    return check_result(last_save_verdict(persistence.info, utc_now(), redis_source.max_last_save_age_s), ERROR)


def build_snapshot_checks(binding: RedisBinding) -> tuple[list, list]:
    """(every check on one source's snapshot asset, the series-wide ones that also run hourly)."""
    checks = build_artifact_checks(binding.key("redis_snapshot"), snapshot_series(binding))

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

    return [*checks.values(), persistence_config, last_save], [checks["freshness"], persistence_config, last_save]
