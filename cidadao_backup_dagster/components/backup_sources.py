"""`BackupSources`: the sources to back up, declared in a `defs.yaml` the Dagster way.

    type: cidadao_backup_dagster.components.BackupSources
    attributes:
      postgres:
        - name: analytics
          url_env: ANALYTICS_DATABASE_URL

The attributes are the sources file's (BACKUP_SOURCES_FILE) keys and go through the same parser
(`core.sources.parse_sources`): the same checks, the same asset keys, job names and storage layout. No
attributes at all means what the code location does without a component: BACKUP_SOURCES_FILE, else one source
of each from DATABASE_URL / REDIS_URL. See deploy/components-example/."""

from typing import Annotated

import dagster as dg

from ..core.sources import PostgresSourceSpec, RedisSourceSpec, Sources, parse_sources

_PG, _REDIS = PostgresSourceSpec(), RedisSourceSpec()  # the defaults the parser applies, shown in the schema


def doc(description: str) -> dg.Resolver:
    """A field's description in the component's schema (what `dg check yaml` and the docs show)."""
    return dg.Resolver.default(description=description)


class PostgresSourceModel(dg.Model, dg.Resolvable):
    """One PostgreSQL database (a `postgres:` item of the sources file)."""

    name: Annotated[
        str,
        doc(
            "Source name, [a-z][a-z0-9_]*, unique: part of asset keys (`<name>/postgres_daily_backup`) and job "
            "names (`<name>__restore_postgres`), so keep it stable"
        ),
    ]
    url_env: Annotated[
        str, doc("Environment variable holding the connection URL (never the URL itself: it carries a password)")
    ] = _PG.url_env
    storage_prefix: Annotated[
        str | None, doc("Folder under BACKUP_STORAGE_URL and OFFSITE_STORAGE_URL; default: the name")
    ] = None
    daily_schedule: Annotated[str, doc("Cron (UTC) of the daily backup")] = _PG.daily_schedule
    weekly_schedule: Annotated[str, doc("Cron (UTC) of the weekly offsite copy")] = _PG.weekly_schedule
    daily_retention_days: Annotated[float, doc("Days daily backups are kept")] = _PG.daily_retention_days
    weekly_retention_days: Annotated[float, doc("Days weekly offsite backups are kept")] = _PG.weekly_retention_days
    server: Annotated[str, doc("Pool id: dumps on one server run one at a time; empty = host:port of the URL")] = (
        _PG.server
    )
    exports: Annotated[bool, doc("The investigations / agent_instances exports read this database (one)")] = _PG.exports
    pitr: Annotated[bool, doc("Point-in-time recovery: WAL archive and base backups (docs/pitr.md)")] = _PG.pitr


class RedisSourceModel(dg.Model, dg.Resolvable):
    """One Redis instance (a `redis:` item of the sources file)."""

    name: Annotated[str, doc("Source name, [a-z][a-z0-9_]*, unique: part of asset keys and job names")]
    url_env: Annotated[str, doc("Environment variable holding the redis:// URL")] = _REDIS.url_env
    storage_prefix: Annotated[str | None, doc("Folder under BACKUP_STORAGE_URL; default: the name")] = None
    snapshot_schedule: Annotated[str, doc("Cron (UTC) of the hourly snapshot")] = _REDIS.snapshot_schedule
    retention_days: Annotated[float, doc("Days snapshots are kept")] = _REDIS.retention_days
    mode: Annotated[str, doc("auto | rdb | logical; empty = REDIS_SNAPSHOT_MODE (default auto)")] = _REDIS.mode
    server: Annotated[str, doc("Pool id; empty = host:port of the URL")] = _REDIS.server


class BackupSources(dg.Component, dg.Resolvable, dg.Model):
    """Backups, checks, drills, recovery jobs and exports of the PostgreSQL databases and Redis instances listed
    here, with the code location's shared resources (storage, encryption, alerts, retention) from the
    environment (docs/configuration.md)."""

    postgres: Annotated[
        list[PostgresSourceModel], doc("PostgreSQL databases to back up (daily, weekly offsite, monthly drill)")
    ] = []
    redis: Annotated[list[RedisSourceModel], doc("Redis instances to snapshot hourly")] = []

    def sources(self, origin: str) -> Sources | None:
        """The declared sources through the sources file's parser; None = none declared (the environment's)."""
        if not self.postgres and not self.redis:
            return None
        data = {
            kind: [item.model_dump(exclude_none=True) for item in items]
            for kind, items in (("postgres", self.postgres), ("redis", self.redis))
            if items
        }
        return parse_sources(data, origin, variable="defs.yaml")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from ..definitions import build_defs  # the code location's own builder: same keys, names, resources

        return build_defs(sources=self.sources(str(context.path / "defs.yaml")))
