"""The source server side of PITR: may it replicate (each refusal named with its fix), its physical slot, and the
binaries of its major version."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ...artifacts.pipeline import EncryptionStage
from ...errors import BackupError, ConfigurationError, PermanentError
from ..backup import BackupSettings
from ..client import BinDir, PgConnection, choose_client, find_clients
from .layout import parse_lsn

Logger = Callable[[str], None]
DEFAULT_INCREMENTALS = 3  # with the weekly schedule: a full base every 4th week, weekly incrementals between


def quiet(_msg: str) -> None:
    """The default logger: say nothing."""


@dataclass(frozen=True)
class RunOptions:
    """What a WAL archive run and a base backup take besides the server, the storage and the source name."""

    slot: str | None = None  # default: slot_name_for(source)
    settings: BackupSettings = field(default_factory=BackupSettings)
    encryption: EncryptionStage | None = None
    encryption_info: dict | None = None  # the manifests' `encryption` entry when encrypting
    identities: list | None = None  # age identities: a WAL run then resumes from the stored partial's bytes
    tmp_dir: str | None = None
    timeout: float = 3600  # seconds pg_receivewal may take
    variable: str = "DATABASE_URL"  # named in a refusal: which setting holds the connection
    incrementals: int = DEFAULT_INCREMENTALS  # base backups, PostgreSQL >= 17: incrementals between two full ones
    extra: dict | None = None  # the manifests' `run` entry
    say: Logger = quiet

    @classmethod
    def of(cls, options: dict) -> RunOptions:
        """From keyword arguments; None keeps a default (a caller's `settings=None`)."""
        return cls(**{k: v for k, v in options.items() if v is not None})


@dataclass(frozen=True)
class ServerInfo:
    system_identifier: str
    timeline: int
    current_lsn: int
    server_version: str
    server_version_num: int
    segment_size: int
    superuser: str  # the bootstrap superuser (OID 10): who connects to a recovered copy

    @property
    def major(self) -> int:
        return self.server_version_num // 10000


def check_client(name: str, server_major: int, bin_dir: BinDir = None) -> str:
    """The closest `name` of at least the server's major (PG_BIN_DIR, else PG_BIN_DIRS and the standard places)."""
    reason = f"The server is PostgreSQL {server_major}, and {name} must be at least its major version"
    return choose_client(find_clients(name, bin_dir), server_major, reason, bin_dir).path


def exact_client(name: str, server_major: int, bin_dir: BinDir = None) -> str | None:
    """`name` of exactly the server's major (pg_waldump reads only its own major's WAL), or None."""
    try:
        found = find_clients(name, bin_dir)
    except PermanentError:
        return None
    return next((c.path for c in found if c.major == server_major), None)


def replication_preflight(conn: PgConnection, *, bin_dir: BinDir = None, variable: str = "DATABASE_URL") -> ServerInfo:
    """Check that `conn` may stream WAL, and gather what the archive records. Every reason for a refusal is
    listed at once with its fix (a ConfigurationError: retrying cannot help)."""
    with conn.connect(autocommit=True) as c:
        wal_level, senders, version, version_num, seg_size, superuser = c.execute(
            "SELECT current_setting('wal_level'), current_setting('max_wal_senders')::int, "
            "current_setting('server_version'), current_setting('server_version_num')::int, "
            "pg_size_bytes(current_setting('wal_segment_size')), (SELECT rolname FROM pg_roles WHERE oid = 10)"
        ).fetchone()
        can_replicate, is_super = c.execute(
            "SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    user = conn.user or "<user>"
    problems, fixes = [], []
    if wal_level == "minimal":
        problems.append("wal_level is minimal")
        fixes.append("set wal_level = replica in postgresql.conf and restart the server")
    if senders < 1:
        problems.append("max_wal_senders is 0")
        fixes.append("set max_wal_senders = 10 (or at least 2) and restart the server")
    if not (can_replicate or is_super):
        problems.append(f"role {user} lacks the REPLICATION attribute")
        fixes.append(f"ALTER ROLE {user} REPLICATION;")
    identified = None
    if not problems:
        identified, error = _identify_system(conn, version_num // 10000, bin_dir)
        if identified is None:
            if "pg_hba.conf" in error:
                problems.append("pg_hba.conf has no replication line for this user and host")
                fixes.append(
                    f"add `host replication {user} <this machine's address>/32 scram-sha-256` to pg_hba.conf, then "
                    "SELECT pg_reload_conf();"
                )
            else:
                problems.append(f"a replication connection fails ({error})")
                fixes.append("check max_wal_senders, the role's REPLICATION attribute and pg_hba.conf")
    if problems:
        raise ConfigurationError(
            variable,
            f"{conn.display()} refuses WAL streaming for point-in-time recovery: {'; '.join(problems)}",
            "; ".join(fixes) + ". The logical dumps are not affected",
        )
    sysid, tli, xlogpos = identified  # type: ignore[misc]
    return ServerInfo(sysid, tli, parse_lsn(xlogpos), version, version_num, int(seg_size), superuser)


def _identify_system(conn: PgConnection, server_major: int, bin_dir: BinDir) -> tuple[tuple | None, str]:
    """IDENTIFY_SYSTEM over a replication connection: proves pg_hba and the role allow streaming."""
    psql = check_client("psql", server_major, bin_dir)
    proc = subprocess.run(
        [psql, "-XAt", "--no-password", "-d", f"{conn.conninfo()} replication=true", "-c", "IDENTIFY_SYSTEM"],
        capture_output=True,
        text=True,
        env=conn.env(),
        timeout=60,
    )
    if proc.returncode != 0:
        return None, conn.redact(proc.stderr.strip())[-500:]
    sysid, tli, xlogpos, _db = proc.stdout.strip().split("|")
    return (sysid, int(tli), xlogpos), ""


# ------------------------------------------------------------------------------------------ slot


@dataclass(frozen=True)
class SlotState:
    name: str
    created: bool
    restart_lsn: int | None
    wal_status: str | None
    retained_bytes: int | None  # WAL the server keeps for this slot


def slot_name_for(source: str) -> str:
    return "cbd_pitr_" + re.sub(r"[^a-z0-9_]", "_", source.lower())[:50]


def ensure_slot(conn: PgConnection, slot: str) -> SlotState:
    """The physical slot the archive streams from; created (reserving WAL now) when missing. A lost slot (the
    server dropped WAL it should have kept, max_slot_wal_keep_size) is an error: the archive has a gap."""
    created = False
    with conn.connect(autocommit=True) as c:
        row = c.execute("SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        if row is None:
            c.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
            created = True
        elif row[0] != "physical":
            raise PermanentError(
                f"Replication slot {slot} is a {row[0]} slot; PITR needs a physical one. Fix: pick another name"
            )
        state = _slot_state(c, slot, created)
    if state.wal_status == "lost":
        raise PermanentError(
            f"Replication slot {slot} is lost: the server removed WAL the archive had not received "
            "(max_slot_wal_keep_size). The archive has a gap from here; fix: SELECT pg_drop_replication_slot("
            f"'{slot}'); let the next WAL run create it again, and take a new base backup"
        )
    return state


def slot_state(conn: PgConnection, slot: str) -> SlotState | None:
    with conn.connect(autocommit=True) as c:
        return _slot_state(c, slot, False)


def _slot_state(c, slot: str, created: bool) -> SlotState | None:
    row = c.execute(
        "SELECT restart_lsn::text, wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    restart, status, retained = row
    return SlotState(slot, created, parse_lsn(restart) if restart else None, status, retained)


def drop_slot(conn: PgConnection, slot: str) -> bool:
    with conn.connect(autocommit=True) as c:
        row = c.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    return row is not None


def current_position(conn: PgConnection) -> tuple[int, datetime]:
    """The server's clock, then its WAL write position: every transaction that committed before that instant
    has its commit record below that LSN, so an archive holding WAL up to it can recover to that instant."""
    with conn.connect(autocommit=True) as c:
        (now,) = c.execute("SELECT clock_timestamp()").fetchone()
        (lsn,) = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return parse_lsn(lsn), now.astimezone(UTC)


# ------------------------------------------------------------------------------------------ pg_waldump

_XACT = re.compile(r"desc: (?:COMMIT|ABORT)\S*(?: \d+:)? (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")


@dataclass(frozen=True)
class XactSummary:
    count: int
    first_at: datetime | None
    last_at: datetime | None


def xact_times(path: Path, waldump: str) -> XactSummary:
    """Commit/abort timestamps in one WAL file (the recovery_target_time stop points it holds). A partial
    segment ends in zeros, which pg_waldump reports as an error after printing every record: its output counts.
    `path` must carry the segment's own name (pg_waldump reads the position from it)."""
    proc = subprocess.run(
        [waldump, "--rmgr=Transaction", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
        timeout=300,
    )
    stamps = [
        datetime.strptime(m.group(1) + ("" if "." in m.group(1) else ".0"), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        for m in _XACT.finditer(proc.stdout)
    ]
    if proc.returncode != 0 and not stamps and "invalid record length" not in proc.stderr:
        if "could not find a valid record" not in proc.stderr:
            raise BackupError(f"pg_waldump could not read {path.name}: {proc.stderr.strip()[-500:]}")
    return XactSummary(len(stamps), min(stamps, default=None), max(stamps, default=None))
