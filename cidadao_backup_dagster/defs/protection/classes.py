"""The artifact classes the protection jobs act on. Each domain contributes its own, so retention,
lifecycle and immutability cover every artifact the project writes."""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ArtifactClass:
    name: str  # stable id, used in BACKUP_RETENTION_DAYS: postgres_daily=7,...
    storage_key: str  # resource key of the storage it lives in
    series: Callable[[object], str]  # resources -> series prefix; raises ConfigurationError when unset
    keep_days: float  # default retention
    protected: Callable[[object], set[str]] = lambda resources: set()  # partitions no retention may delete
    resource_keys: tuple[str, ...] = ("postgres_source",)  # what `series`/`protected` read besides storage
