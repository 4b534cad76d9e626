"""Which databases and Redis instances to back up: one of each from DATABASE_URL / REDIS_URL, or a list in
a YAML sources file (BACKUP_SOURCES_FILE). Each source has its own schedule, retention and storage prefix.

The file names environment variables, never URLs with passwords: it is meant to be committed and reviewed.
Every mistake is reported with the file, the source and the key, before anything is defined or run."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .errors import ConfigurationError

VARIABLE = "BACKUP_SOURCES_FILE"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REDIS_MODES = ("auto", "rdb", "logical")


@dataclass(frozen=True)
class PostgresSourceSpec:
    """One PostgreSQL database. `name` "" is the implicit DATABASE_URL source, whose keys carry no prefix."""

    name: str = ""
    url_env: str = "DATABASE_URL"
    storage_prefix: str = ""  # under BACKUP_STORAGE_URL and OFFSITE_STORAGE_URL
    daily_schedule: str = "0 3 * * *"  # the strategy's daily backup at 03:00 UTC
    weekly_schedule: str = "0 2 * * 0"  # Sundays 02:00 UTC, to offsite storage
    daily_retention_days: float = 7
    weekly_retention_days: float = 30
    server: str = ""  # pool id: dumps on one server wait for each other; "" = host:port of the URL
    exports: bool = False  # the investigations / agent_instances exports read this database
    pitr: bool = False  # point-in-time recovery (WAL archive + base backups); POSTGRES_PITR=on turns it on for all


@dataclass(frozen=True)
class RedisSourceSpec:
    """One Redis instance. `name` "" is the implicit REDIS_URL source (series name REDIS_SOURCE_NAME)."""

    name: str = ""
    url_env: str = "REDIS_URL"
    storage_prefix: str = ""
    snapshot_schedule: str = "5 * * * *"  # at :05 for the hour that just ended
    retention_days: float = 7
    mode: str = ""  # auto | rdb | logical; "" = REDIS_SNAPSHOT_MODE
    server: str = ""


@dataclass(frozen=True)
class Sources:
    postgres: tuple[PostgresSourceSpec, ...] = (PostgresSourceSpec(),)
    redis: tuple[RedisSourceSpec, ...] = (RedisSourceSpec(),)
    file: str = ""  # "" = the one-source defaults

    @property
    def export_source(self) -> PostgresSourceSpec:
        """The database the critical-data exports read: the one marked `exports: true`, else the first listed,
        else DATABASE_URL (a file listing only Redis instances)."""
        return next(
            (s for s in self.postgres if s.exports), self.postgres[0] if self.postgres else PostgresSourceSpec()
        )


def load_sources(path: str | None) -> Sources:
    """The sources in `path`, or the one-source defaults when `path` is empty."""
    if not path:
        return Sources()
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigurationError(VARIABLE, f"{path} does not exist", "point it at a sources YAML file, or unset it")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigurationError(VARIABLE, f"{path} is not valid YAML ({exc})", "fix the file's syntax") from None
    return parse_sources(data, path, file=str(file))


def parse_sources(data: object, path: str, *, file: str = "", variable: str = VARIABLE) -> Sources:
    """The sources of a `postgres:` / `redis:` mapping read from `path` (a sources file, or a component's
    defs.yaml): every check of the sources file applies, and errors name `variable` and `path`."""
    if not isinstance(data, dict):
        raise ConfigurationError(variable, f"{path} must be a mapping", "write `postgres:` and/or `redis:` lists")
    _no_unknown(path, "the top level", data, {"postgres", "redis"}, variable)
    postgres = tuple(
        _parse(path, PostgresSourceSpec, "postgres", item, variable) for item in _list(path, data, "postgres", variable)
    )
    redis = tuple(
        _parse(path, RedisSourceSpec, "redis", item, variable) for item in _list(path, data, "redis", variable)
    )
    if not postgres and not redis:
        raise ConfigurationError(variable, f"{path} lists no sources", "add a `postgres:` or `redis:` list")
    names = [s.name for s in (*postgres, *redis)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigurationError(
            variable, f"{path}: source name(s) {', '.join(duplicates)} used twice", "give every source its own name"
        )
    if sum(s.exports for s in postgres) > 1:
        raise ConfigurationError(variable, f"{path}: more than one source has `exports: true`", "mark only one")
    return Sources(postgres=postgres, redis=redis, file=file or path)


def _list(path: str, data: dict, kind: str, variable: str) -> list[dict]:
    items = data.get(kind) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigurationError(variable, f"{path}: `{kind}` must be a list of mappings", "write `- name: ...` items")
    return items


def _no_unknown(path: str, where: str, item: dict, known: set[str], variable: str) -> None:
    unknown = sorted(set(item) - known)
    if unknown:
        raise ConfigurationError(
            variable, f"{path}: unknown key(s) {', '.join(unknown)} in {where}", f"use only {', '.join(sorted(known))}"
        )


def _parse(path: str, spec_type, kind: str, item: dict, variable: str):
    name = item.get("name")
    where = f"{kind} source {name!r}" if name else f"a {kind} source"
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigurationError(
            variable,
            f"{path}: {where} needs a `name` of lowercase letters, digits and _ starting with a letter",
            "e.g. name: cidadao (it becomes part of asset keys and job names, so keep it stable)",
        )
    known = {f.name for f in fields(spec_type)}
    if "url" in item:
        raise ConfigurationError(
            variable,
            f"{path}: {where} has a `url`; the file must not hold connection strings (they carry passwords)",
            "put the URL in an environment variable and name it with url_env: MY_DATABASE_URL",
        )
    _no_unknown(path, where, item, known, variable)
    values = {"storage_prefix": name, **item}  # each listed source in its own folder unless told otherwise
    types = {f.name: f.type for f in fields(spec_type)}  # "str" | "float" | "bool" (postponed annotations)
    for key, value in item.items():
        if types[key] == "bool":
            if not isinstance(value, bool):
                raise ConfigurationError(variable, f"{path}: {where}: {key} must be true or false", "fix the value")
        elif types[key] == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(
                    variable, f"{path}: {where}: {key} must be a positive number of days", f"e.g. {key}: 7"
                )
            values[key] = float(value)
        elif not isinstance(value, str):
            raise ConfigurationError(variable, f"{path}: {where}: {key} must be a string", f"quote it: {key}: '...'")
    spec = spec_type(**values)
    if not ENV_NAME.match(spec.url_env):
        raise ConfigurationError(
            variable, f"{path}: {where}: url_env {spec.url_env!r} is not a variable name", "e.g. ANALYTICS_DATABASE_URL"
        )
    for key in [f.name for f in fields(spec) if f.name.endswith("_schedule")]:
        _check_cron(path, where, key, getattr(spec, key), variable)
    if spec.storage_prefix.strip("/") != spec.storage_prefix or ".." in spec.storage_prefix.split("/"):
        raise ConfigurationError(
            variable,
            f"{path}: {where}: storage_prefix {spec.storage_prefix!r} is not a relative path",
            "e.g. analytics",
        )
    if isinstance(spec, RedisSourceSpec) and spec.mode not in ("", *REDIS_MODES):
        raise ConfigurationError(variable, f"{path}: {where}: mode {spec.mode!r}", f"use {', '.join(REDIS_MODES)}")
    return spec


CRON_FIELD = re.compile(r"^(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*$")


def _check_cron(path: str, where: str, key: str, value: str, variable: str = VARIABLE) -> None:
    if len(value.split()) != 5 or not all(CRON_FIELD.match(f) for f in value.split()):
        raise ConfigurationError(
            variable, f"{path}: {where}: {key} {value!r} is not a 5-field cron expression", "e.g. '0 3 * * *'"
        )


def server_of(url: str, default_port: int) -> str:
    """host:port of a connection URL, without user or password: the id of a per-server pool."""
    if not url:
        return "unset"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port or default_port
    except ValueError:
        return "unparsed"
    return f"{host}:{port}"


def check_distinct_series(sources: Sources, environ: dict[str, str]) -> None:
    """Two PostgreSQL sources writing under one storage prefix must not share a database name: series from before
    they were keyed by source name are found by `<prefix>/postgres/<database>/`, and two sources would then read,
    and expire, each other's backups (every Supabase database is called `postgres`)."""
    seen: dict[tuple[str, str], str] = {}
    for spec in sources.postgres:
        url = environ.get(spec.url_env, "")
        try:
            database = urlsplit(url).path.lstrip("/").split("/")[0] if url else ""
        except ValueError:
            database = ""
        if not database:
            continue  # unset or malformed: the source's own runs say so, naming the variable
        key = (spec.storage_prefix.strip("/"), database)
        if key in seen:
            raise ConfigurationError(
                VARIABLE,
                f"{sources.file}: sources {seen[key]!r} and {spec.name!r} both back up a database named "
                f"{database!r} under storage_prefix {key[0]!r}",
                "give each its own storage_prefix",
            )
        seen[key] = spec.name
