"""How one source's Dagster objects are named and which resources they read.

The implicit source (DATABASE_URL / REDIS_URL, no sources file) keeps the short names: asset
`postgres_daily_backup`, job `restore_postgres`, resource `postgres_source`. A source listed in
BACKUP_SOURCES_FILE as `analytics` gets asset `analytics/postgres_daily_backup`, job
`analytics__restore_postgres` and resource `postgres_source__analytics`: stable as long as its name is."""

import os
from dataclasses import dataclass, field

import dagster as dg

from ..core.sources import (
    PostgresSourceSpec,
    RedisSourceSpec,
    Sources,
    check_distinct_series,
    load_sources,
    server_of,
)

# One dump per database server at a time; dagster.yaml's pools.default_limit (1) applies to each pool.
PG_DUMP_POOL = "postgres_dump"
# One snapshot per Redis server at a time: each SYNC forks the server.
REDIS_SNAPSHOT_POOL = "redis_snapshot"


def configured_sources() -> Sources:
    sources = load_sources(os.getenv("BACKUP_SOURCES_FILE", ""))
    check_distinct_series(sources, dict(os.environ))
    return sources


@dataclass(frozen=True)
class Binding:
    name: str  # "" for the implicit source

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


@dataclass(frozen=True)
class PgBinding(Binding):
    spec: PostgresSourceSpec = PostgresSourceSpec()

    @classmethod
    def of(cls, spec: PostgresSourceSpec) -> "PgBinding":
        return cls(spec.name, spec)

    @property
    def pool(self) -> str:
        if not self.name:
            return PG_DUMP_POOL
        return f"{PG_DUMP_POOL}/{self.spec.server or server_of(os.getenv(self.spec.url_env, ''), 5432)}"

    @property
    def source_key(self) -> str:
        return self.resource_key("postgres_source")

    @property
    def offsite_key(self) -> str:
        return self.resource_key("offsite_storage")

    @property
    def resource_keys(self) -> set[str]:
        return {self.source_key, self.storage_key, self.offsite_key}

    def source(self, resources):
        return getattr(resources, self.source_key)

    def offsite(self, resources):
        return getattr(resources, self.offsite_key)


@dataclass(frozen=True)
class RedisBinding(Binding):
    spec: RedisSourceSpec = RedisSourceSpec()

    @classmethod
    def of(cls, spec: RedisSourceSpec) -> "RedisBinding":
        return cls(spec.name, spec)

    @property
    def pool(self) -> str:
        if not self.name:
            return REDIS_SNAPSHOT_POOL
        return f"{REDIS_SNAPSHOT_POOL}/{self.spec.server or server_of(os.getenv(self.spec.url_env, ''), 6379)}"

    @property
    def source_key(self) -> str:
        return self.resource_key("redis_source")

    @property
    def resource_keys(self) -> set[str]:
        return {self.source_key, self.storage_key}

    def source(self, resources):
        return getattr(resources, self.source_key)


DEFAULT_PG = PgBinding.of(PostgresSourceSpec())
DEFAULT_REDIS = RedisBinding.of(RedisSourceSpec())


@dataclass
class DomainDefs:
    """What one domain contributes for one source."""

    defs: dg.Definitions
    health_checks: list = field(default_factory=list)  # series-wide checks also run hourly on their own
    artifact_classes: list = field(default_factory=list)  # for retention, lifecycle and the health report
    storage_targets: list = field(default_factory=list)  # (asset key, storage resource key) for bucket checks
