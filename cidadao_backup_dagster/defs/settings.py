"""The code location's settings: read from the environment once, when `build_defs()` runs, and passed down.

Nothing reads the environment at import time. Resource fields are set here too: a variable that is set becomes
`dg.EnvVar(NAME)` (the UI shows where the value came from), an unset one the default. docs/configuration.md
lists every variable with its default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

import dagster as dg

from ..core.errors import ConfigurationError
from ..core.sources import Sources, check_distinct_series, load_sources
from .partitions import DEFAULT_START, START_VARIABLE, BackupPartitions, backup_partitions, parse_start


@dataclass(frozen=True)
class Settings:
    environ: Mapping[str, str] = field(repr=False, compare=False)  # a snapshot: it holds secrets, never printed
    sources: Sources
    partitions_start: date
    retries: int  # BACKUP_RETRIES
    retry_delay_s: float | None  # BACKUP_RETRY_DELAY_S; None = each asset's own first wait
    local_storage: Path  # where BACKUP_STORAGE_URL points when unset

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, sources: Sources | None = None) -> Settings:
        """`environ` (default: the process environment now); `sources` replaces BACKUP_SOURCES_FILE's (a component
        declares its own)."""
        env = MappingProxyType(dict(os.environ if environ is None else environ))
        if sources is None:
            sources = load_sources(env.get("BACKUP_SOURCES_FILE", ""))
        check_distinct_series(sources, dict(env))
        try:
            retries = int(env.get("BACKUP_RETRIES") or 2)
            delay = float(env["BACKUP_RETRY_DELAY_S"]) if env.get("BACKUP_RETRY_DELAY_S") else None
        except ValueError:
            raise ConfigurationError(
                "BACKUP_RETRIES/BACKUP_RETRY_DELAY_S",
                "must be numbers",
                "e.g. BACKUP_RETRIES=2 BACKUP_RETRY_DELAY_S=120",
            ) from None
        return cls(
            environ=env,
            sources=sources,
            partitions_start=parse_start(env.get(START_VARIABLE, "").strip() or DEFAULT_START),
            retries=retries,
            retry_delay_s=delay,
            local_storage=Path(env.get("XDG_DATA_HOME") or "~/.local/share").expanduser() / "cidadao-backups",
        )

    def get(self, variable: str, default: str = "") -> str:
        return self.environ.get(variable) or default

    def env_or(self, variable: str, default, *, as_int: bool = False):
        """`dg.EnvVar(variable)` when it is set (the UI then shows where the value came from), else `default`."""
        if self.environ.get(variable) in (None, ""):
            return default
        return dg.EnvVar.int(variable) if as_int else dg.EnvVar(variable)

    @cached_property
    def partitions(self) -> BackupPartitions:
        return backup_partitions(self.partitions_start)
