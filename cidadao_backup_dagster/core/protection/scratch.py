"""Scratch things a run creates and must remove (drill/recover databases, staging restore databases, throwaway
redis-servers, temp dirs). A run killed by SIGKILL, OOM or node loss cannot clean up after itself, so every
scratch database is named with a known prefix and labelled with who made it and when: the sweeper
(core/protection/sweeper.py) finds what a dead run left and removes it after a grace period.

Never scratch: a `<name>_replaced_<timestamp>` database. It is the operator's undo of a replace-restore and
only a person drops it.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg import sql

from ..postgres.client import PgConnection

# Prefixes of every database this project creates for itself (never a user's database).
DRILL_PREFIX = "cbd_drill_"
RECOVER_PREFIX = "cbd_recover_"
STAGING_PREFIX = "cbd_restore_"  # restore_postgres builds the new database here, then renames it into place
SCRATCH_PREFIXES = (DRILL_PREFIX, RECOVER_PREFIX, STAGING_PREFIX)
# Temp dirs/files (under RESTORE_TMPDIR / TMPDIR) carry this prefix.
TEMP_PREFIX = "cbd-"
LABEL_TAG = "cidadao-backup-dagster scratch"


def scratch_name(prefix: str, label: str) -> str:
    """`<prefix><label[:30]>_<8 hex>`, lower case, within PostgreSQL's 63-byte identifier limit."""
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in label.lower())[:30]
    return f"{prefix}{clean}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class ScratchLabel:
    created_at: datetime
    host: str
    pid: int
    run_id: str = ""

    def to_comment(self) -> str:
        return f"{LABEL_TAG} " + json.dumps(
            {
                "created_at": self.created_at.astimezone(UTC).isoformat(),
                "host": self.host,
                "pid": self.pid,
                "run_id": self.run_id,
            }
        )

    @classmethod
    def parse(cls, comment: str | None) -> ScratchLabel | None:
        """None for a comment that is not ours (or no comment): the caller decides what an unlabelled one means."""
        if not comment or not comment.startswith(LABEL_TAG + " "):
            return None
        try:
            data = json.loads(comment[len(LABEL_TAG) + 1 :])
            return cls(datetime.fromisoformat(data["created_at"]), str(data["host"]), int(data["pid"]),
                       str(data.get("run_id", "")))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None


def current_label(run_id: str = "") -> ScratchLabel:
    return ScratchLabel(datetime.now(UTC), socket.gethostname(), os.getpid(), run_id)


def create_scratch_database(server: PgConnection, dbname: str, run_id: str = "") -> None:
    """CREATE DATABASE `dbname` and label it (COMMENT ON DATABASE) so a sweeper can tell its age and maker."""
    if not dbname.startswith(SCRATCH_PREFIXES):
        raise ValueError(f"{dbname!r} is not a scratch database name (prefixes {', '.join(SCRATCH_PREFIXES)})")
    with server.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(dbname), sql.Literal(current_label(run_id).to_comment())
            )
        )
