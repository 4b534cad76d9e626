"""What an export reads and how it writes it: the configured table, columns and time column, the settings,
the partition windows, and the table as the source resolved it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from psycopg import sql

from ..artifacts.layout import series_prefix
from ..artifacts.publish import safe_name
from ..errors import BackupError, ConfigurationError

Format = Literal["jsonl", "csv"]

# The strategy's columns for `investigations`; `*` (every column, in table order) for `agent_instances`.
INVESTIGATIONS_COLUMNS = ("id", "query", "status", "results", "metadata", "created_at")
TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


class ExportSchemaError(BackupError):
    """The configured table, column or time column does not exist (or cannot be exported) in the source."""


def parse_table(text: str, variable: str) -> tuple[str | None, str]:
    """`investigations` or `schema.table` -> (schema or None, table). Names are taken literally (case kept)."""
    text = (text or "").strip()
    parts = [p.strip() for p in text.split(".")] if text else []
    if not parts or len(parts) > 2 or not all(parts):
        raise ConfigurationError(variable, f"{text!r} is not a table name", "use table or schema.table")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def parse_columns(text: str, variable: str) -> tuple[str, ...] | None:
    """`id,query,status` -> ('id', 'query', 'status'); `*` (or empty) -> None, meaning every column."""
    text = (text or "").strip()
    if text in ("", "*"):
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ConfigurationError(variable, f"{text!r} has an empty column name", "list names like id,query,status")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigurationError(variable, f"lists {', '.join(dupes)} more than once", "name each column once")
    return tuple(names)


@dataclass(frozen=True)
class ExportSpec:
    """What one export series reads and how it writes it."""

    table: str  # as configured: `investigations` or `schema.table`
    fmt: Format
    columns: tuple[str, ...] | None = None  # None = every column, in table order
    time_column: str | None = None  # partitions select rows by it; None = full snapshot per partition
    table_variable: str = "export table"  # the setting named in errors
    columns_variable: str = "export columns"
    time_column_variable: str = "export time column"

    @property
    def extension(self) -> str:
        return "jsonl.gz" if self.fmt == "jsonl" else "csv.gz"

    def series(self, database: str, cadence: str) -> str:
        return series_prefix("exports", f"{safe_name(database)}/{safe_name(self.table)}", cadence)


@dataclass(frozen=True)
class ExportSettings:
    gzip_level: int = 6
    gzip_threads: int = -1  # deflate workers, -1 = one per core (still one standard gzip member)
    progress_every: float = 10.0


@dataclass(frozen=True)
class Window:
    """One partition: its key and, for time-partitioned exports, the half-open [start, end) it covers."""

    key: str
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(): `jsonb`, `timestamp with time zone`, `character varying(20)`, ...

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type}


@dataclass(frozen=True)
class ResolvedTable:
    schema: str
    name: str
    columns: tuple[Column, ...]  # the exported ones, in export order
    time_column: Column | None
    time_column_indexed: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


def iter_days(start: datetime, end: datetime) -> Iterator[Window]:
    """Daily UTC windows [start, end)."""
    day = start
    while day < end:
        nxt = day + timedelta(days=1)
        yield Window(day.strftime("%Y-%m-%d"), day, nxt)
        day = nxt
