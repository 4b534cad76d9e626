"""The thin Dagster layer: one folder per domain, each declaring assets, checks and schedules over `core/`."""
