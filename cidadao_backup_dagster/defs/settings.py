"""The code location's settings: read from the environment once, when `build_defs()` runs, and passed down.

Nothing reads the environment at import time. Resource fields are set here too: a variable that is set becomes
`dg.EnvVar(NAME)` (the UI shows where the value came from), an unset one the default. docs/configuration.md
lists every variable with its default."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field

from ..core.artifacts.storage import DEFAULT_PARTS_IN_FLIGHT, MIN_PART_SIZE, MiB
from ..core.errors import ConfigurationError
from ..core.sources import Sources, check_distinct_series, load_sources
from .partitions import DEFAULT_START, START_VARIABLE, BackupPartitions, backup_partitions, parse_start

PART_SIZE_VARIABLE = "BACKUP_S3_PART_SIZE_MB"
DEFAULT_PART_SIZE_MB = 16
PART_SIZE_RANGE = (MIN_PART_SIZE // MiB, 5 * 1024)  # S3's part minimum (5 MiB) and maximum (5 GiB)
PARTS_IN_FLIGHT_VARIABLE = "BACKUP_S3_PARTS_IN_FLIGHT"
REDIS_MAX_AGE_VARIABLE = "REDIS_SNAPSHOT_MAX_AGE_H"
R = TypeVar("R", bound=dg.ConfigurableResource)


def _number(
    env: Mapping[str, str],
    variable: str,
    default: float,
    low: float,
    high: float,
    *,
    whole: bool = False,
    above: bool = False,
) -> float:
    """`variable` as a number in [low, high] (`above`: more than low), `default` when unset or empty; anything
    else is a ConfigurationError naming it and the accepted range."""
    text = (env.get(variable) or "").strip()
    if not text:
        return default
    bounds = f"more than {low:g}" if high == math.inf else f"{low:g} to {high:g}"
    fix = f"give {'a whole number' if whole else 'a number'} {bounds}, e.g. {variable}={default:g}"
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        raise ConfigurationError(
            variable, f"{text!r} is not {'a whole number' if whole else 'a number'}", fix
        ) from None
    if not math.isfinite(value) or value < low or value > high or (above and value == low):
        raise ConfigurationError(variable, f"{text} is out of range", fix)
    return value


@dataclass(frozen=True)
class Settings:
    environ: Mapping[str, str] = field(repr=False, compare=False)  # a snapshot: it holds secrets, never printed
    sources: Sources
    partitions_start: date
    retries: int  # BACKUP_RETRIES
    retry_delay_s: float | None  # BACKUP_RETRY_DELAY_S; None = each asset's own first wait
    local_storage: Path  # where BACKUP_STORAGE_URL points when unset
    s3_part_size_mb: int = DEFAULT_PART_SIZE_MB  # BACKUP_S3_PART_SIZE_MB: every S3 multipart part (equal sizes)
    s3_parts_in_flight: int = DEFAULT_PARTS_IN_FLIGHT  # BACKUP_S3_PARTS_IN_FLIGHT: parts uploading (and in memory)
    redis_snapshot_max_age_h: float = 2.0  # REDIS_SNAPSHOT_MAX_AGE_H: Redis freshness ERROR past it (strategy)

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
            s3_part_size_mb=int(_number(env, PART_SIZE_VARIABLE, DEFAULT_PART_SIZE_MB, *PART_SIZE_RANGE, whole=True)),
            s3_parts_in_flight=int(_number(env, PARTS_IN_FLIGHT_VARIABLE, DEFAULT_PARTS_IN_FLIGHT, 1, 16, whole=True)),
            redis_snapshot_max_age_h=_number(env, REDIS_MAX_AGE_VARIABLE, 2.0, 0.0, math.inf, above=True),
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


def env_field(variable: str, default: str | int, description: str) -> Any:
    """A resource field that `from_env` reads from `variable` (its default when unset): the variable, its
    default and its description are stated once, here, instead of again where the resource is built. Text and
    whole numbers only: `dg.EnvVar` resolves those two (a float field is read in Settings and passed in)."""
    if not isinstance(default, (str, int)) or isinstance(default, bool):
        raise TypeError(f"env_field({variable!r}): the default must be text or a whole number, not {default!r}")
    return Field(default=default, description=f"{description} ({variable})", json_schema_extra={"env": variable})


def from_env(resource_type: type[R], settings: Settings, **given) -> R:
    """`resource_type` with each `env_field` read through `settings.env_or`; `given` values win."""
    values = dict(given)
    for name, info in resource_type.model_fields.items():
        variable = (info.json_schema_extra or {}).get("env")  # type: ignore[union-attr]
        if variable and name not in values:
            values[name] = settings.env_or(variable, info.default, as_int=info.annotation is int)
    return resource_type(**values)
