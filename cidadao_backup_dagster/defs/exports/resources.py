"""Settings of the critical data exports: which table and columns each export reads, gzip level, and the
limits of its checks. Deployments whose schema differs from the strategy's set the environment variables;
the values are parsed when a run starts, and the table and columns are checked against the database
before anything is written."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from ...core.errors import ConfigurationError
from ...core.exports.spec import INVESTIGATIONS_COLUMNS, ExportSettings, ExportSpec, parse_columns, parse_table

if TYPE_CHECKING:
    from ..settings import Settings


class ExportPolicy(dg.ConfigurableResource):
    """What the exports read and how their checks judge them; defaults are the strategy's."""

    investigations_table: str = Field(
        default="investigations", description="Table of the daily JSON export (INVESTIGATIONS_EXPORT_TABLE)"
    )
    investigations_columns: str = Field(
        default=",".join(INVESTIGATIONS_COLUMNS),
        description="Columns of the daily JSON export, in order; * = all (INVESTIGATIONS_EXPORT_COLUMNS)",
    )
    investigations_time_column: str = Field(
        default="created_at",
        description="Timestamp column that puts a row in a daily (UTC) partition (INVESTIGATIONS_EXPORT_TIME_COLUMN)",
    )
    agent_instances_table: str = Field(
        default="agent_instances", description="Table of the weekly CSV snapshot (AGENT_INSTANCES_EXPORT_TABLE)"
    )
    agent_instances_columns: str = Field(
        default="*",
        description="Columns of the weekly CSV snapshot; * = all, in table order (AGENT_INSTANCES_EXPORT_COLUMNS)",
    )
    gzip_level: int = Field(default=6, description="gzip level 1-9 (EXPORT_GZIP_LEVEL): 1 fastest, 9 smallest")
    size_history: int = Field(default=7, description="How many earlier valid exports the size check compares to")
    max_size_deviation_pct: float = Field(default=50.0, description="WARN when the size is this far from the median")
    daily_warn_age_hours: float = Field(default=48, description="Daily export: WARN when the newest is older")
    daily_error_age_hours: float = Field(default=7 * 24, description="Daily export: ERROR (the strategy's 7-day RPO)")
    weekly_warn_age_hours: float = Field(default=8 * 24 + 6, description="Weekly export: WARN (one run late)")
    weekly_error_age_hours: float = Field(default=15 * 24, description="Weekly export: ERROR (two runs missed)")

    def investigations_spec(self) -> ExportSpec:
        table_var, columns_var = "INVESTIGATIONS_EXPORT_TABLE", "INVESTIGATIONS_EXPORT_COLUMNS"
        time_var = "INVESTIGATIONS_EXPORT_TIME_COLUMN"
        parse_table(self.investigations_table, table_var)
        time_column = self.investigations_time_column.strip()
        if not time_column:
            raise ConfigurationError(time_var, "is empty", "name the timestamp column, e.g. created_at")
        return ExportSpec(
            table=self.investigations_table.strip(),
            fmt="jsonl",
            columns=parse_columns(self.investigations_columns, columns_var),
            time_column=time_column,
            table_variable=table_var,
            columns_variable=columns_var,
            time_column_variable=time_var,
        )

    def agent_instances_spec(self) -> ExportSpec:
        table_var, columns_var = "AGENT_INSTANCES_EXPORT_TABLE", "AGENT_INSTANCES_EXPORT_COLUMNS"
        parse_table(self.agent_instances_table, table_var)
        return ExportSpec(
            table=self.agent_instances_table.strip(),
            fmt="csv",
            columns=parse_columns(self.agent_instances_columns, columns_var),
            table_variable=table_var,
            columns_variable=columns_var,
        )

    def settings(self) -> ExportSettings:
        if not 1 <= self.gzip_level <= 9:
            raise ConfigurationError("EXPORT_GZIP_LEVEL", f"{self.gzip_level} is out of range", "use 1..9 (6 default)")
        return ExportSettings(gzip_level=self.gzip_level)


def build_export_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Read when the definitions are built, like `build_resources()`: a variable set then is shown in the UI
    as coming from the environment; an unset one leaves the strategy's default."""
    env_or = settings.env_or
    return {
        "export_policy": ExportPolicy(
            investigations_table=env_or("INVESTIGATIONS_EXPORT_TABLE", "investigations"),
            investigations_columns=env_or("INVESTIGATIONS_EXPORT_COLUMNS", ",".join(INVESTIGATIONS_COLUMNS)),
            investigations_time_column=env_or("INVESTIGATIONS_EXPORT_TIME_COLUMN", "created_at"),
            agent_instances_table=env_or("AGENT_INSTANCES_EXPORT_TABLE", "agent_instances"),
            agent_instances_columns=env_or("AGENT_INSTANCES_EXPORT_COLUMNS", "*"),
            gzip_level=env_or("EXPORT_GZIP_LEVEL", 6, as_int=True),
        )
    }
