"""Component types of this package (the `dg` registry module named in pyproject.toml)."""

from .backup_sources import BackupSources, PostgresSourceModel, RedisSourceModel

__all__ = ["BackupSources", "PostgresSourceModel", "RedisSourceModel"]
