"""How one source's Dagster objects are named and which resources they read.

The implicit source (DATABASE_URL / REDIS_URL, no sources file) keeps the short names: asset
`postgres_daily_backup`, job `restore_postgres`, resource `postgres_source`. A source listed in
BACKUP_SOURCES_FILE as `analytics` gets asset `analytics/postgres_daily_backup`, job
`analytics__restore_postgres` and resource `postgres_source__analytics`: stable as long as its name is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Self

import dagster as dg

from ..core.sources import PostgresSourceSpec, RedisSourceSpec, server_of
from .retry import retry_policy

if TYPE_CHECKING:
    from .partitions import BackupPartitions
    from .settings import Settings

# One dump per database server at a time; dagster.yaml's pools.default_limit (1) applies to each pool.
PG_DUMP_POOL = "postgres_dump"
# One snapshot per Redis server at a time: each SYNC forks the server.
REDIS_SNAPSHOT_POOL = "redis_snapshot"


@dataclass(frozen=True)
class SourceKind:
    """What differs between a PostgreSQL and a Redis source's bindings."""

    pool: str  # the pool of its servers (one dump or snapshot per server at a time)
    default_port: int  # the port a URL without one implies
    source_resource: str  # base of its source resource key


@dataclass(frozen=True)
class Binding:
    name: str  # "" for the implicit source
    settings: Settings  # partitions, retries and the environment the definitions are built from
    spec: PostgresSourceSpec | RedisSourceSpec | None = None  # each kind sets its own (and its default)

    @property
    def key_prefix(self) -> list[str]:
        return [self.name] if self.name else []

    def key(self, base: str) -> dg.AssetKey:
        return dg.AssetKey([*self.key_prefix, base])

    def group(self, domain: str) -> str:
        """Asset group: the domain (postgres, redis, recovery) for the implicit source; the source's name for a
        listed one, so its graph shows its backups and drill together (the graph shows only a key's last part)."""
        return self.name or domain

    def named(self, base: str) -> str:
        """Job, op, schedule and sensor names: `base`, or `<source>__base` for a listed source."""
        return f"{self.name}__{base}" if self.name else base

    def resource_key(self, base: str) -> str:
        return f"{base}__{self.name}" if self.name else base

    def class_name(self, base: str) -> str:
        """Artifact class id (retention overrides, report rows): `postgres_daily` or `analytics.postgres_daily`."""
        return f"{self.name}.{base}" if self.name else base

    @property
    def tags(self) -> dict[str, str]:
        return {"cidadao/source": self.name or "default"}

    @property
    def storage_key(self) -> str:
        return self.resource_key("backup_storage")

    def storage(self, resources):
        return getattr(resources, self.storage_key)

    @property
    def partitions(self) -> BackupPartitions:
        return self.settings.partitions

    def retry_policy(self, default_delay_s: float) -> dg.RetryPolicy:
        return retry_policy(self.settings, default_delay_s)

    kind: ClassVar[SourceKind]

    @classmethod
    def of(cls, spec: PostgresSourceSpec | RedisSourceSpec, settings: Settings) -> Self:
        return cls(spec.name, settings, spec)

    @property
    def pool(self) -> str:
        """The pool of the source's server: one dump (or snapshot) per server at a time."""
        if not self.name:
            return self.kind.pool
        server = self.spec.server or server_of(self.settings.get(self.spec.url_env), self.kind.default_port)
        return f"{self.kind.pool}/{server}"

    @property
    def source_key(self) -> str:
        return self.resource_key(self.kind.source_resource)

    @property
    def resource_keys(self) -> set[str]:
        return {self.source_key, self.storage_key}

    def source(self, resources):
        return getattr(resources, self.source_key)


@dataclass(frozen=True)
class PgBinding(Binding):
    spec: PostgresSourceSpec = PostgresSourceSpec()
    kind: ClassVar[SourceKind] = SourceKind(PG_DUMP_POOL, 5432, "postgres_source")

    @property
    def offsite_key(self) -> str:
        """The weekly external copy's storage (OFFSITE_STORAGE_URL under the source's storage prefix)."""
        return self.resource_key("offsite_storage")

    @property
    def resource_keys(self) -> set[str]:
        return {*super().resource_keys, self.offsite_key}


@dataclass(frozen=True)
class RedisBinding(Binding):
    spec: RedisSourceSpec = RedisSourceSpec()
    kind: ClassVar[SourceKind] = SourceKind(REDIS_SNAPSHOT_POOL, 6379, "redis_source")


def default_pg(settings: Settings | None = None) -> PgBinding:
    """The implicit DATABASE_URL source, with settings from the environment now unless given (tests, tools)."""
    from .settings import Settings

    return PgBinding.of(PostgresSourceSpec(), settings or Settings.from_environ())


@dataclass
class DomainDefs:
    """What one domain contributes for one source."""

    defs: dg.Definitions
    health_checks: list = field(default_factory=list)  # series-wide checks also run hourly on their own
    artifact_classes: list = field(default_factory=list)  # for retention, lifecycle and the health report
    storage_targets: list = field(default_factory=list)  # (asset key, storage resource key) for bucket checks
