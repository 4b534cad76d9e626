"""Point-in-time recovery for PostgreSQL (Dagster-free): a WAL archive fed by scheduled `pg_receivewal` runs,
`pg_basebackup` base backups, and recovery to an instant in a throwaway server. See docs/pitr.md."""

from .base import base_backup
from .layout import WalGap, base_series, wal_series
from .recovery import RecoveredServer, RecoveryPlan, plan_recovery, restore_to_instant
from .server import drop_slot, ensure_slot, replication_preflight, slot_name_for
from .wal import WalRunResult, archive_wal

__all__ = [
    "RecoveredServer",
    "RecoveryPlan",
    "WalGap",
    "WalRunResult",
    "archive_wal",
    "base_backup",
    "base_series",
    "drop_slot",
    "ensure_slot",
    "plan_recovery",
    "replication_preflight",
    "restore_to_instant",
    "slot_name_for",
    "wal_series",
]
