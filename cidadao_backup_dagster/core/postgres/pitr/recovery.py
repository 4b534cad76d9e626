"""Recover a cluster as of an instant: base backup + archived WAL replayed in a throwaway PostgreSQL.

Every refusal (no base before the instant, the archive not reaching it, a gap, another cluster's WAL, no server
binaries of the base's major version) happens in `plan_recovery`, before anything is fetched or written. Then:
fetch and verify the base (SHA-256s, then `pg_verifybackup` against its backup_manifest) and the WAL it needs,
extract into a private data directory, replay with `restore_command` + `recovery_target_time` on a private
socket, check that recovery stopped at the instant, and hand back a connection. The caller copies the data out
(pg_dump | pg_restore) or keeps the data directory.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from ...artifacts.manifest import Manifest, _newest_valid_of, all_valid_manifests, iso
from ...artifacts.reader import is_encrypted
from ...artifacts.storage import MiB, Storage
from ...errors import BackupError, RefusedError
from ..client import BinDir, ClientDirs, PgConnection, binary_version, major
from .fetch import extract_base, fetch_wal
from .layout import (
    WalFile,
    WalGap,
    base_chain,
    base_series,
    find_gaps,
    list_archive,
    parse_lsn,
    segment_name,
    segno_of,
)
from .server import Logger, exact_client, quiet
from .wal import newest_partial

DEBIAN_BIN = "/usr/lib/postgresql/{major}/bin"  # server binaries (postgres, pg_verifybackup) of one major
SERVER_USER = "postgres"  # initdb/postgres refuse to run as root: a root worker runs the copy as this user
SOURCE_CONFIG = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf")  # the source's, set aside meanwhile


@dataclass
class RecoveryPlan:
    source: str
    target_time: datetime
    base: Manifest
    wal: list[WalFile]  # oldest first; the last may be a partial
    bin_dir: str
    stop_at_target: bool  # False: no commit after the instant is archived, so replaying everything is the instant
    recoverable_until: datetime
    chain: list[Manifest] = field(default_factory=list)  # the full base first, `base` last (one member: a full)

    @property
    def timeline(self) -> int:
        return int(self.base.data["base"]["timeline"])

    @property
    def server_major(self) -> int:
        return int(self.base.data["source"]["server_major"])

    @property
    def members(self) -> list[Manifest]:
        return self.chain or [self.base]

    @property
    def raw_bytes(self) -> int:
        """Room the recovery needs: the base (each member of a chain, and what pg_combinebackup writes) and WAL."""
        bases = sum(m.raw_bytes for m in self.members)
        return bases * (2 if len(self.members) > 1 else 1) + sum(w.manifest.raw_bytes for w in self.wal)


def parse_instant(text: str | datetime) -> datetime:
    if isinstance(text, datetime):
        instant = text
    else:
        try:
            instant = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise RefusedError(f"{text!r} is not an instant: write 2026-11-24T18:00:00Z (ISO 8601, UTC)") from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def server_binaries(server_major: int, bin_dir: BinDir = None) -> str:
    """The server binaries of exactly `server_major` (a data directory only starts under its own major): in the
    folder `bin_dir`, else (a search: ClientDirs) the first of its folders and /usr/lib/postgresql/<major>/bin
    holding them."""
    if isinstance(bin_dir, ClientDirs) or not bin_dir:
        folders = [*(bin_dir.dirs if bin_dir else ()), DEBIAN_BIN.format(major=server_major)]
        bin_dir = next((d for d in folders if _postgres_major(d) == server_major), folders[-1])
    where = bin_dir
    postgres = Path(where, "postgres")
    if not os.access(postgres, os.X_OK):
        raise RefusedError(
            f"No PostgreSQL {server_major} server binaries at {where}: a base backup of a PostgreSQL {server_major} "
            f"server only starts under that major. Fix: install postgresql-{server_major} (PGDG apt repository) or "
            "point the server bin dir at its bin folder. Nothing was fetched or written"
        )
    found = major(binary_version(str(postgres)))
    if found != server_major:
        raise RefusedError(
            f"{postgres} is PostgreSQL {found}, the base backup is PostgreSQL {server_major}: refusing before anything "
            f"is touched. Fix: use the PostgreSQL {server_major} server binaries"
        )
    return where


def server_search(bin_dir: BinDir) -> ClientDirs:
    """The configured client folder(s) as a search for server binaries: they are looked for there first, then
    in /usr/lib/postgresql/<major>/bin (PG_BIN_DIR may hold only the clients)."""
    if isinstance(bin_dir, ClientDirs):
        return bin_dir
    return ClientDirs((bin_dir,) if bin_dir else ())


def _postgres_major(folder: str) -> int | None:
    postgres = Path(folder, "postgres")
    return major(binary_version(str(postgres))) if os.access(postgres, os.X_OK) else None


def plan_recovery(
    storage: Storage, *, source: str, target_time: str | datetime, bin_dir: BinDir = None
) -> RecoveryPlan:
    """Choose the base and the WAL for `target_time`, or refuse (nothing is fetched or written here)."""
    target = parse_instant(target_time)
    bases = [
        m for m in all_valid_manifests(storage, base_series(source)) if m.data.get("kind") == "postgres-base-backup"
    ]
    before = [m for m in bases if m.taken_at <= target]
    if not before:
        earliest = f"; the earliest is consistent from {iso(bases[0].taken_at)}" if bases else "; there are none"
        raise RefusedError(
            f"No base backup of {source} is consistent before {iso(target)}{earliest}. Pick a later instant or a "
            "logical dump"
        )
    base = before[-1]
    b = base.data["base"]
    server_major = int(base.data["source"]["server_major"])
    bin_dir = server_binaries(server_major, bin_dir)
    chain = base_chain(storage, base)  # a missing member is refused by name
    if len(chain) > 1 and exact_client("pg_combinebackup", server_major, bin_dir) is None:
        raise RefusedError(
            f"Base {base.partition} is an incremental chain of {len(chain)} backups, and {bin_dir} has no "
            f"pg_combinebackup of PostgreSQL {server_major}: refusing before anything is touched. Fix: install "
            f"postgresql-{server_major} (it carries pg_combinebackup)"
        )
    timeline, size = int(b["timeline"]), int(b["segment_size"])
    start, end = segno_of(parse_lsn(b["start_lsn"]), size), segno_of(parse_lsn(b["end_lsn"]), size)
    listing = list_archive(storage, source, timeline, size)
    files: dict[int, WalFile] = {}
    for segno, keys in listing.complete.items():
        if segno >= start and (found := _newest_valid_of(storage, keys)) is not None:
            files[segno] = WalFile(found)
    partial_segno = listing.newest_partial
    partial = newest_partial(storage, listing.partials[partial_segno]) if partial_segno is not None else None
    newest = max([*files, *([partial_segno] if partial else [])], default=None)
    where = storage.uri(listing.series)
    if newest is None:
        raise RefusedError(
            f"The WAL archive {where} holds nothing from {b['start_segment']} on, which base {base.partition} needs. "
            "Run the WAL archive first"
        )
    archived = {**files, **({partial_segno: partial} if partial is not None else {})}
    # recovery_target_time stops before the first commit after the instant; with none archived, PostgreSQL would
    # end recovery "before the target was reached" (an error), while replaying all of it is exactly the instant.
    # WAL past the segment holding the first such commit is never read: not fetched, and a gap there is harmless.
    unknown = any(w.info.get("xact_count") is None for w in archived.values())  # archived without pg_waldump
    stop_segno = next(
        (s for s in sorted(archived) if s >= end and (t := archived[s].last_xact_at) is not None and t > target),
        None,
    )
    last = newest if unknown or stop_segno is None else stop_segno
    gaps = find_gaps(set(files), partial_segno if partial else None, timeline, size, start, last)
    if gaps:
        raise WalGap(gaps, where)
    if last < end:
        raise RefusedError(
            f"The WAL archive {where} reaches {segment_name(timeline, last, size)}; base {base.partition} needs "
            f"{b['start_segment']} .. {b['end_segment']}. Run the WAL archive first"
        )
    wal = [archived[s] for s in range(start, last + 1)]
    sysid = base.data["source"]["system_identifier"]
    strangers = [w.info["file"] for w in wal if w.manifest.data["source"]["system_identifier"] != sysid]
    if strangers:
        raise RefusedError(
            f"WAL {strangers[0]} in {where} comes from another cluster (system identifier differs from base "
            f"{base.partition}'s {sysid}): refusing to replay it"
        )
    until = max(w.recoverable_until for w in archived.values())
    if target > until:
        raise RefusedError(
            f"The WAL archive of {source} is recoverable until {iso(until)}; {iso(target)} is later. Run the WAL "
            "archive (postgres_wal_archive) and try again"
        )
    stop = unknown or stop_segno is not None
    return RecoveryPlan(source, target, base, wal, bin_dir, stop, until, chain)


# ------------------------------------------------------------------------------------------ the copy


@dataclass
class RecoveredServer:
    """A throwaway PostgreSQL holding the cluster as of `plan.target_time`, on a private socket."""

    plan: RecoveryPlan
    work: Path
    port: int
    superuser: str
    proc: subprocess.Popen | None = None
    recovered_to: datetime | None = None  # the last transaction replayed
    stop_record: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.work / "data"

    @property
    def socket_dir(self) -> Path:
        return self.work

    @property
    def log_path(self) -> Path:
        return self.work / "postgres.log"

    def conn(self, dbname: str = "postgres") -> PgConnection:
        return PgConnection(
            {"host": str(self.socket_dir), "port": str(self.port), "dbname": dbname, "user": self.superuser}
        )

    def databases(self) -> list[str]:
        with self.conn("template1").connect(autocommit=True) as c:
            return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate")]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # fast shutdown: a clean checkpoint, so a kept data dir starts cleanly
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def hand_over(self, destination: Path) -> Path:
        """Stop the copy and move its data directory to `destination` with the source's own settings back in
        place (the throwaway ones pointed at folders that are about to go), ready for a self-hosted server of
        the same major version. Owned by the server user."""
        self.stop()
        data = self.data_dir
        for name in SOURCE_CONFIG:
            kept = data / f"{name}.source"
            if kept.exists():
                kept.replace(data / name)
            elif name == "postgresql.conf":  # the source kept it elsewhere (Debian: /etc/postgresql)
                (data / name).write_text("# The source's settings lived outside its data directory: add yours.\n")
            else:
                (data / name).unlink(missing_ok=True)
        os.sync()  # the copy ran with fsync off: everything on disk before it is handed over
        shutil.move(str(data), str(destination))
        return destination

    def __enter__(self) -> RecoveredServer:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


@dataclass(frozen=True)
class RecoveryOptions:
    """How a recovery runs, besides what and when."""

    identities: list | None = None  # age identities, for an encrypted archive
    bin_dir: BinDir = None  # the server binaries of the base's major: a folder, or a search (ClientDirs)
    tmp_dir: str | None = None  # RESTORE_TMPDIR: the throwaway server's data, WAL and dumps
    timeout: float = 3600  # seconds the replay may take
    say: Logger = quiet


def restore_to_instant(storage: Storage, *, source: str, target_time: str | datetime, **options) -> RecoveredServer:
    """Recover `source` as of `target_time` into a running throwaway server (stop it with `cleanup()`);
    `options`: RecoveryOptions."""
    opts = RecoveryOptions(**options)
    plan = plan_recovery(storage, source=source, target_time=target_time, bin_dir=opts.bin_dir)
    encrypted = [m for m in [*plan.members, *(w.manifest for w in plan.wal)] if is_encrypted(m)]
    if encrypted and not opts.identities:
        raise RefusedError(
            f"{storage.uri(encrypted[0].artifact_key)} is encrypted: set BACKUP_AGE_IDENTITY_FILE to recover it"
        )
    root = Path(opts.tmp_dir or tempfile.gettempdir())
    free = shutil.disk_usage(root).free
    if free < plan.raw_bytes * 1.2:
        raise RefusedError(
            f"Not enough space in {root} for the base backup and WAL ({plan.raw_bytes / MiB:,.0f} MiB, "
            f"{free / MiB:,.0f} MiB free). Fix: point RESTORE_TMPDIR at a bigger volume"
        )
    opts.say(
        f"Recovering {source} as of {iso(plan.target_time)} from base {plan.base.partition} "
        f"({plan.base.pitr_base.start_lsn}"
        + (f", an incremental chain of {len(plan.members)} backups" if len(plan.members) > 1 else "")
        + f") and {len(plan.wal)} WAL file(s)"
    )
    work = Path(tempfile.mkdtemp(prefix="cbd-pitr-restore-", dir=root))
    server = RecoveredServer(plan, work, _free_port(), plan.base.data["source"].get("superuser") or "postgres")
    try:
        extract_base(storage, plan, server.data_dir, opts.identities, opts.say)
        fetch_wal(storage, plan, work / "wal", opts.identities)
        _configure(server)
        _start(server, opts.timeout, opts.say)
        _check_reached(server)
    except BaseException:
        server.cleanup()
        raise
    reached = iso(server.recovered_to) if server.recovered_to else "the base"
    opts.say(f"Recovered to {reached} ({server.stop_record or 'end of archive'})")
    return server


def recover_data_directory(
    storage: Storage, *, source: str, target_time: str | datetime, destination: str | Path, **options
) -> tuple[Path, RecoveryPlan, datetime | None]:
    """The cluster as of `target_time`, left as a data directory at `destination` (absent or an empty folder:
    anything else is refused before the recovery starts; `options`: RecoveryOptions). Returns (path, plan,
    last transaction replayed)."""
    dest = Path(destination).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RefusedError(f"{dest} exists and is not an empty folder: refusing to put a data directory there")
    if not dest.parent.is_dir():
        raise RefusedError(f"{dest.parent} does not exist: create it, or pick another data_directory")
    server = restore_to_instant(storage, source=source, target_time=target_time, **options)
    try:
        if dest.exists():
            dest.rmdir()  # empty, checked above: the move puts the data directory in its place
        path = server.hand_over(dest)
    finally:
        server.cleanup()
    RecoveryOptions(**options).say(
        f"Data directory as of {iso(server.plan.target_time)} at {path} (PostgreSQL {server.plan.server_major})"
    )
    return path, server.plan, server.recovered_to


def _configure(server: RecoveredServer) -> None:
    data, plan = server.data_dir, server.plan
    # The source's settings (preload libraries, paths, its pg_hba) need not fit here: set aside, put back by
    # hand_over() when the data directory is kept.
    for name in SOURCE_CONFIG:
        if (data / name).exists():
            (data / name).rename(data / f"{name}.source")
    (data / "postgresql.auto.conf").write_text("")
    (data / "standby.signal").unlink(missing_ok=True)
    (data / "recovery.signal").write_text("")
    (data / "pg_hba.conf").write_text("local all all trust\n")  # the socket's folder is private to this process
    target = (
        f"recovery_target_time = '{plan.target_time.astimezone(UTC).isoformat(sep=' ')}'\n"
        if plan.stop_at_target
        else ""
    )
    (data / "postgresql.conf").write_text(
        "# Throwaway recovery copy written by cidadao-backup-dagster (the source's settings are not carried over)\n"
        "listen_addresses = ''\n"
        f"port = {server.port}\n"
        f"unix_socket_directories = '{server.socket_dir}'\n"
        f'restore_command = \'cp "{server.work / "wal"}/%f" "%p"\'\n'
        f"{target}"
        "recovery_target_action = 'promote'\n"
        "hot_standby = off\n"  # no connections until recovery ends, and no primary-settings check
        "archive_mode = off\n"
        "fsync = off\n"
        "lc_messages = 'C'\n"
        "log_timezone = 'UTC'\n"
        "timezone = 'UTC'\n"
        "shared_preload_libraries = ''\n"
    )
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        for folder, dirs, files in os.walk(server.work):
            os.chown(folder, user.pw_uid, user.pw_gid)
            for name in files + dirs:
                os.lchown(os.path.join(folder, name), user.pw_uid, user.pw_gid)
    os.chmod(data, 0o700)


def _start(server: RecoveredServer, timeout: float, say: Logger) -> None:
    kwargs = {}
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    log = open(server.log_path, "ab")
    try:
        server.proc = subprocess.Popen(
            [str(Path(server.plan.bin_dir, "postgres")), "-D", str(server.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=server.data_dir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"},
            start_new_session=True,
            **kwargs,
        )
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    conninfo = server.conn("template1")
    while True:
        if server.proc.poll() is not None:
            raise BackupError(f"The recovery server exited (code {server.proc.returncode}): {_log_tail(server)}")
        try:
            with psycopg.connect(conninfo.conninfo(), connect_timeout=5, autocommit=True) as c:
                if not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise BackupError(f"Recovery did not finish within {timeout:.0f} s: {_log_tail(server)}")
        time.sleep(0.3)


_STOP = re.compile(r"recovery stopping before (commit|abort) of transaction \d+, time (\S+ \S+)")


def _check_reached(server: RecoveredServer) -> None:
    """Recovery must have stopped at the instant: before the first commit after it (or at the archive's end
    when none was archived), with every replayed transaction at or before it."""
    plan = server.plan
    text = server.log_path.read_text(errors="replace")
    with psycopg.connect(server.conn("template1").conninfo(), autocommit=True) as c:
        (replayed,) = c.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()
    server.recovered_to = replayed.astimezone(UTC) if replayed else None
    found = _STOP.search(text)
    server.stop_record = found.group(0) if found else None
    if plan.stop_at_target and not found:
        raise BackupError(f"Recovery ended without reaching {iso(plan.target_time)}: {_log_tail(server)}")
    if server.recovered_to is not None and server.recovered_to > plan.target_time:
        raise BackupError(
            f"Recovery replayed a transaction of {server.recovered_to.isoformat()}, after {iso(plan.target_time)}"
        )


def _log_tail(server: RecoveredServer, lines: int = 15) -> str:
    try:
        return " | ".join(server.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "no server log"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
