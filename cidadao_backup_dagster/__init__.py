"""Backup and recovery for Cidadão.AI's PostgreSQL and Redis, as a Dagster code location.

`core/` does the work without Dagster; `defs/` declares it to Dagster; `definitions.py` wires `defs`.
"""

__version__ = "0.1.0"
