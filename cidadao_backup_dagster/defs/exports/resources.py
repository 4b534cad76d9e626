"""Settings of the critical data exports: which table and columns each export reads, gzip level, and the
limits of its checks. Deployments whose schema differs from the strategy's set the environment variables;
the values are parsed when a run starts, and the table and columns are checked against the database
before anything is written."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from ...core.errors import ConfigurationError
from ...core.exports.spec import (
    INVESTIGATIONS_COLUMNS,
    ExportSettings,
    ExportSpec,
    Format,
    parse_columns,
    parse_table,
)
from ..settings import Settings, env_field, from_env


def _export_spec(
    fmt: Format,
    table: tuple[str, str],
    columns: tuple[str, str],
    time_column: tuple[str, str] | None = None,
) -> ExportSpec:
    """One export's spec from its settings, each (value, variable named in errors); no time column = a full
    snapshot per partition. Checked in this order: table, time column, columns."""
    (table_text, table_var), (columns_text, columns_var) = table, columns
    parse_table(table_text, table_var)
    time = {}
    if time_column is not None:
        name, time_var = time_column[0].strip(), time_column[1]
        if not name:
            raise ConfigurationError(time_var, "is empty", "name the timestamp column, e.g. created_at")
        time = {"time_column": name, "time_column_variable": time_var}
    return ExportSpec(
        table=table_text.strip(),
        fmt=fmt,
        columns=parse_columns(columns_text, columns_var),
        table_variable=table_var,
        columns_variable=columns_var,
        **time,
    )


class ExportPolicy(dg.ConfigurableResource):
    """What the exports read and how their checks judge them; defaults are the strategy's."""

    investigations_table: str = env_field(
        "INVESTIGATIONS_EXPORT_TABLE", "investigations", "Table of the daily JSON export"
    )
    investigations_columns: str = env_field(
        "INVESTIGATIONS_EXPORT_COLUMNS",
        ",".join(INVESTIGATIONS_COLUMNS),
        "Columns of the daily JSON export, in order; * = all",
    )
    investigations_time_column: str = env_field(
        "INVESTIGATIONS_EXPORT_TIME_COLUMN", "created_at", "Timestamp column that puts a row in a daily (UTC) partition"
    )
    agent_instances_table: str = env_field(
        "AGENT_INSTANCES_EXPORT_TABLE", "agent_instances", "Table of the weekly CSV snapshot"
    )
    agent_instances_columns: str = env_field(
        "AGENT_INSTANCES_EXPORT_COLUMNS", "*", "Columns of the weekly CSV snapshot; * = all, in table order"
    )
    gzip_level: int = env_field("EXPORT_GZIP_LEVEL", 6, "gzip level 1-9: 1 fastest, 9 smallest")
    size_history: int = Field(default=7, description="How many earlier valid exports the size check compares to")
    max_size_deviation_pct: float = Field(default=50.0, description="WARN when the size is this far from the median")
    daily_warn_age_hours: float = Field(default=48, description="Daily export: WARN when the newest is older")
    daily_error_age_hours: float = Field(default=7 * 24, description="Daily export: ERROR (the strategy's 7-day RPO)")
    weekly_warn_age_hours: float = Field(default=8 * 24 + 6, description="Weekly export: WARN (one run late)")
    weekly_error_age_hours: float = Field(default=15 * 24, description="Weekly export: ERROR (two runs missed)")

    def investigations_spec(self) -> ExportSpec:
        return _export_spec(
            "jsonl",
            (self.investigations_table, "INVESTIGATIONS_EXPORT_TABLE"),
            (self.investigations_columns, "INVESTIGATIONS_EXPORT_COLUMNS"),
            (self.investigations_time_column, "INVESTIGATIONS_EXPORT_TIME_COLUMN"),
        )

    def agent_instances_spec(self) -> ExportSpec:
        return _export_spec(
            "csv",
            (self.agent_instances_table, "AGENT_INSTANCES_EXPORT_TABLE"),
            (self.agent_instances_columns, "AGENT_INSTANCES_EXPORT_COLUMNS"),
        )

    def settings(self) -> ExportSettings:
        if not 1 <= self.gzip_level <= 9:
            raise ConfigurationError("EXPORT_GZIP_LEVEL", f"{self.gzip_level} is out of range", "use 1..9 (6 default)")
        return ExportSettings(gzip_level=self.gzip_level)


def build_export_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Read when the definitions are built, like `build_resources()`: a variable set then is shown in the UI
    as coming from the environment; an unset one leaves the strategy's default."""
    return {"export_policy": from_env(ExportPolicy, settings)}
