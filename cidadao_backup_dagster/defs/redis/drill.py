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
from ...core.redis.drill import REPORTS, RTO_REDIS_S, run_redis_drill
from ..audit import audit_storage, audited
from ..drills import build_drill as build_drill_defs
from ..drills import drill_result
from ..failures import failure
from ..resources import RedisSource
from ..sources import RedisBinding
from .assets import redis_series

DESCRIPTION = (
    "Monthly drill: loads the newest valid Redis snapshot into a throwaway redis-server (private unix "
    "socket), checks its SHA-256 and every database's key count against the manifest, times it against the "
    "5-minute RTO, and stores a report under drills/redis/ in BACKUP_STORAGE_URL."
)


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
    return drill_result(
        context,
        report,
        RTO_REDIS_S,
        proved={"format": dg.MetadataValue.text(report.format or "")},
        restored={
            "keys": dg.MetadataValue.int(report.keys or 0),
            "keys_per_db": dg.MetadataValue.json(report.keys_restored),
        },
    )


def build_drill(binding: RedisBinding):
    """(drill asset, its checks, its job, its schedule) for one Redis source."""
    return build_drill_defs(
        binding, "redis_restore_drill", REPORTS, _source, _redis_restore_drill, DESCRIPTION, cron="30 5 1 * *"
    )
