"""The artifact classes the protection jobs and the health report act on. Each domain contributes its own
(per source), so retention, lifecycle and immutability cover every artifact the project writes."""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ArtifactClass:
    name: str  # stable id, used in BACKUP_RETENTION_DAYS: postgres_daily=7,analytics.postgres_daily=14
    storage_key: str  # resource key of the storage it lives in
    series: Callable[[object], str]  # resources -> series prefix; raises ConfigurationError when unset
    keep_days: float  # default retention
    # (resources, warn) -> partitions (or object keys) no retention may delete; damaged reports go to `warn`
    protected: Callable[[object, Callable[[str], None]], set[str]] = lambda resources, warn: set()
    resource_keys: tuple[str, ...] = ("postgres_source",)  # what `series`/`protected` read besides storage
    asset: str | None = None  # the asset that writes it (the report links its checks)
    alert_limit: Callable[[object], float] | None = None  # resources -> freshness alert limit in hours
    # (storage, series, policy, now) -> Plan, when the class is not one artifact per run (PITR: base chains + WAL)
    planner: Callable[..., object] | None = None
    min_keep: int | None = None  # its own floor instead of RETENTION_MIN_KEEP (PITR: full chains)
