"""The monthly Redis restore drill: proves the newest snapshot loads, with every database's key count, and
how long that takes against the RTO.

Which RTO: the strategy's RTO table has one Redis row, "Cache failure < 5 minutes" ("provision new Redis,
flush old cache"); its recovery scenario 2, "Redis instance loss", is that same procedure plus loading the
RDB. So the restore must fit inside those 5 minutes: WARN above half (2.5 min, little room left for
provisioning), ERROR above 5 min."""

import dagster as dg

from ...core.artifacts.drill_reports import DrillReport
from ...core.errors import BackupError, ConfigurationError
from ...core.redis.backup import safe_name
from ...core.redis.drill import RTO_REDIS_S, newest_passing_report, read_report, run_redis_drill
from ..artifact_checks import DrillSeries, build_drill_checks
from ..audit import audit_storage, audited
from ..failures import failure
from ..resources import RedisSource
from ..schedules import latest_partition_schedule, source_asset_job
from ..sources import RedisBinding
from .assets import redis_series

MONTHLY = dg.MonthlyPartitionsDefinition(start_date="2025-02-01", timezone="UTC")


def _source(redis_source: RedisSource) -> str:
    return safe_name(redis_source.name)


def _redis_restore_drill(context, binding: RedisBinding) -> dg.MaterializeResult:
    redis_source = binding.source(context.resources)
    backup_storage = binding.storage(context.resources)
    encryption = context.resources.encryption
    recovery = context.resources.recovery
    with audited(context, audit_storage(backup_storage), "drill") as audit:
        result = _drill(context, redis_source, backup_storage, encryption, recovery)
        audit.update(
            result="ok" if result.metadata["passed"].value else "failed",
            artifact=result.metadata["backup_uri"].value,
            duration_s=result.metadata["duration_s"].value,
        )
        return result


def _drill(context, redis_source, backup_storage, encryption, recovery) -> dg.MaterializeResult:
    try:
        storage = backup_storage.open()
        found = run_redis_drill(
            storage,
            redis_series(redis_source),
            source=_source(redis_source),
            partition=context.partition_key,
            server_bin=redis_source.bin,
            tmp_dir=recovery.scratch_dir(),
            identities=encryption.identities(),
            say=context.log.info,
        )
    except (BackupError, ConfigurationError) as exc:
        raise failure(exc, allow_retries=False) from None
    report = DrillReport.parse(found)
    verdict = "PASSED" if report.passed else "FAILED: " + "; ".join(report.problems)
    context.log.info(f"Drill {verdict} in {report.duration_seconds:.1f} s, proving {report.backup_uri}")
    return dg.MaterializeResult(
        metadata={
            "passed": dg.MetadataValue.bool(report.passed),
            "proved_backup": dg.MetadataValue.text(report.backup_partition),
            "backup_uri": dg.MetadataValue.text(report.backup_uri),
            "format": dg.MetadataValue.text(report.format or ""),
            "duration_s": dg.MetadataValue.float(report.duration_seconds),
            "rto_s": dg.MetadataValue.int(RTO_REDIS_S),
            "keys": dg.MetadataValue.int(report.keys or 0),
            "keys_per_db": dg.MetadataValue.json(report.keys_restored),
        }
    )


def drill_series(binding: RedisBinding) -> DrillSeries:
    """How the drill checks read one Redis source's drill reports."""

    def read(resources, partition: str) -> DrillReport | None:
        storage = binding.storage(resources).open()
        return DrillReport.of(read_report(storage, _source(binding.source(resources)), partition))

    def newest_passing(resources) -> DrillReport | None:
        storage = binding.storage(resources).open()
        return DrillReport.of(newest_passing_report(storage, _source(binding.source(resources))))

    return DrillSeries(
        noun="snapshot",
        report_name="Redis drill report",
        partitions_def=MONTHLY,
        needs=frozenset({binding.source_key, binding.storage_key}),
        rto_s=RTO_REDIS_S,
        read_report=read,
        newest_passing=newest_passing,
        descriptions={
            "drill_passed": "ERROR unless the snapshot loaded and every database's key count matched the manifest "
            "(within the keys that carry a TTL, which may have expired since).",
            "drill_duration_within_rto": "Restore time against the Redis RTO ('Cache failure < 5 minutes'): WARN "
            "above 2.5 min, ERROR above 5.",
            "recent_passing_drill": "ERROR when no Redis drill has passed in the last 35 days.",
        },
    )


def build_drill(binding: RedisBinding):
    """(drill asset, its checks, its job, its schedule) for one Redis source."""

    @dg.asset(
        key=binding.key("redis_restore_drill"),
        group_name=binding.group("recovery"),
        partitions_def=MONTHLY,
        kinds={"redis"},
        description="Monthly drill: loads the newest valid Redis snapshot into a throwaway redis-server (private unix "
        "socket), checks its SHA-256 and every database's key count against the manifest, times it against the "
        "5-minute RTO, and stores a report under drills/redis/ in BACKUP_STORAGE_URL.",
        tags={"cidadao/domain": "recovery", **binding.tags},
        required_resource_keys={binding.source_key, binding.storage_key, "encryption", "recovery"},
    )
    def redis_restore_drill(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return _redis_restore_drill(context, binding)

    checks = build_drill_checks(redis_restore_drill, drill_series(binding))
    job = source_asset_job(
        binding, "redis_restore_drill_job", redis_restore_drill, "Monthly Redis restore drill with its checks."
    )
    schedule = latest_partition_schedule(
        binding.named("redis_restore_drill_schedule"), job, MONTHLY, "30 5 1 * *", "Monthly Redis restore drill."
    )
    return redis_restore_drill, checks, job, schedule
