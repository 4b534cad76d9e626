"""Sweeper: remove what runs that died (SIGKILL, OOM, node loss) left behind.

Three kinds of leftovers, all named by core/scratch.py's convention:
- scratch databases (`cbd_drill_`, `cbd_recover_`, `cbd_restore_`) labelled by create_scratch_database;
- throwaway redis-servers running in a `cbd-redis-*` temp dir whose run is gone;
- `cbd-*` temp dirs and files under the restore temp dir (RESTORE_TMPDIR, else the system temp dir).

`survey` looks (I/O), `plan_sweep` decides (a pure function: what goes, what stays and why), `remove` acts on
one item. Nothing younger than the grace period goes, nor anything a live process still uses. Never swept: a
`_replaced_` database (the operator's undo of a replace-restore), a database without our label (a user's
database that happens to share a prefix), a temp entry owned by another user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from ..errors import BackupError
from ..postgres.client import PgConnection
from .scratch import SCRATCH_PREFIXES, TEMP_PREFIX, ScratchLabel

# Longer than any run may live: dagster.yaml's run monitoring fails a run after 6 h (max_runtime_seconds).
DEFAULT_GRACE_HOURS = 6.0
REPLACED_MARK = "_replaced_"
REDIS_DIR_PREFIX = f"{TEMP_PREFIX}redis-"  # redis/restore.py, redis/drill.py: mkdtemp(prefix=...)
PROC = Path("/proc")
# /proc start times are derived from whole-second boot time: a maker that started up to this long after its
# label's created_at is still taken as the maker (later means its pid was reused).
START_SLACK = timedelta(seconds=2)


# ------------------------------------------------------------------------------------------- survey


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    name: str  # /proc/<pid>/comm
    started_at: datetime
    zombie: bool
    exe: str = ""  # "" when unreadable (another user's process)
    cwd: str = ""
    cmdline: tuple[str, ...] = ()
    open_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScratchDatabase:
    server: PgConnection = field(repr=False)
    name: str
    comment: str | None
    connections: int

    @property
    def target(self) -> str:
        return self.server.with_dbname(self.name).display()


@dataclass(frozen=True)
class TempEntry:
    path: Path
    modified_at: datetime  # newest mtime of the entry and its direct children
    ours: bool  # owned by this user: only then can this user's processes be the only ones using it


@dataclass
class Survey:
    databases: list[ScratchDatabase] = field(default_factory=list)
    temp: list[TempEntry] = field(default_factory=list)
    processes: dict[int, Process] | None = None  # None: no /proc, so nothing about processes can be told
    roots: tuple[Path, ...] = ()
    skipped: list[str] = field(default_factory=list)  # servers or folders that could not be read, with why


def _boot_time() -> float:
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # gone, or another user's process
        return ""


def read_process(pid: int, boot: float | None = None) -> Process | None:
    """What /proc tells about `pid`, or None when it does not exist (any more)."""
    base = PROC / str(pid)
    try:
        stat = (base / "stat").read_text()
        boot = _boot_time() if boot is None else boot
    except OSError:
        return None
    # comm sits in parentheses and may itself hold spaces or parentheses: split after the last ")".
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    rest = stat[stat.rindex(")") + 2 :].split()
    started = datetime.fromtimestamp(boot + int(rest[19]) / os.sysconf("SC_CLK_TCK"), UTC)
    try:
        cmdline = tuple(a for a in (base / "cmdline").read_bytes().decode(errors="replace").split("\0") if a)
    except OSError:
        cmdline = ()
    try:
        fds = os.listdir(base / "fd")
    except OSError:
        fds = []
    opened = tuple(p for p in (_readlink(base / "fd" / fd) for fd in fds) if p.startswith("/"))
    return Process(pid, int(rest[1]), name, started, rest[0] == "Z", _readlink(base / "exe"),
                   _readlink(base / "cwd"), cmdline, opened)  # fmt: skip


def read_processes() -> dict[int, Process] | None:
    if not (PROC / "stat").exists():
        return None
    boot = _boot_time()
    found = (read_process(int(p.name), boot) for p in PROC.iterdir() if p.name.isdigit())
    return {p.pid: p for p in found if p is not None}


def list_scratch_databases(server: PgConnection) -> list[ScratchDatabase]:
    """Databases on `server` whose name has a scratch prefix, with their label and open connections."""
    with server.connect(autocommit=True) as conn:
        rows = conn.execute(
            """SELECT d.datname, shobj_description(d.oid, 'pg_database'),
                      (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid)
               FROM pg_database d ORDER BY d.datname"""
        ).fetchall()
    return [ScratchDatabase(server, name, comment, n) for name, comment, n in rows if name.startswith(SCRATCH_PREFIXES)]


def temp_roots(tmp_dir: str | None) -> tuple[Path, ...]:
    """Where runs put temp files: RESTORE_TMPDIR when set, else the system temp dir (as the runs do)."""
    return (Path(tmp_dir or tempfile.gettempdir()).resolve(),)


def _temp_entry(path: Path) -> TempEntry:
    st = path.lstat()
    newest, ours = st.st_mtime, st.st_uid == os.getuid()
    if ours and path.is_dir() and not path.is_symlink():
        for child in path.iterdir():  # a run writing inside keeps the whole dir young
            try:
                newest = max(newest, child.lstat().st_mtime)
            except OSError:
                pass
    return TempEntry(path, datetime.fromtimestamp(newest, UTC), ours)


def survey(servers: Iterable[PgConnection], roots: Iterable[Path]) -> Survey:
    """Read every server's scratch databases, the temp roots' `cbd-` entries and the process table. A server
    or folder that cannot be read is listed in `skipped`; the others are still surveyed."""
    result = Survey(processes=read_processes(), roots=tuple(roots))
    for server in servers:
        try:
            result.databases += list_scratch_databases(server)
        except (BackupError, psycopg.Error) as exc:
            result.skipped.append(f"{server.display()}: {server.redact(str(exc)).strip()}")
    for root in result.roots:
        try:
            entries = sorted(p for p in root.iterdir() if p.name.startswith(TEMP_PREFIX))
        except OSError as exc:
            result.skipped.append(f"{root}: {exc.strerror or exc}")
            continue
        for path in entries:
            try:
                result.temp.append(_temp_entry(path))
            except OSError:
                pass  # removed meanwhile
    return result


# --------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Item:
    """One leftover and the decision about it."""

    kind: str  # database | redis-server | temp
    target: str  # printable: a database URL without password, a pid with its dir, a path
    remove: bool
    reason: str
    age_hours: float | None = None
    server: PgConnection | None = field(default=None, repr=False, compare=False)
    name: str = ""  # database name
    pid: int = 0
    started_at: datetime | None = None  # the process's start, to make sure the pid was not reused
    path: str = ""


@dataclass
class SweepPlan:
    items: list[Item] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def remove(self) -> list[Item]:
        # Servers first (they hold their dirs), then temp entries, then databases.
        order = {"redis-server": 0, "temp": 1, "database": 2}
        return sorted((i for i in self.items if i.remove), key=lambda i: order[i.kind])

    @property
    def keep(self) -> list[Item]:
        return [i for i in self.items if not i.remove]

    def describe(self) -> list[str]:
        lines = [f"remove {i.kind} {i.target}: {i.reason}" for i in self.remove]
        lines += [f"keep   {i.kind} {i.target}: {i.reason}" for i in self.keep]
        return lines + [f"skipped {s}" for s in self.skipped]


def _hours(age: timedelta) -> float:
    return round(age.total_seconds() / 3600, 2)


def maker_alive(label: ScratchLabel, host: str, processes: dict[int, Process] | None) -> bool | None:
    """True/False when the label's maker runs on this host and /proc can tell; None when it cannot be told
    (another host, or no /proc): then only the grace period protects it."""
    if label.host != host or processes is None:
        return None
    proc = processes.get(label.pid)
    # A zombie is dead; a process started after the label was written is another one under a reused pid.
    return proc is not None and not proc.zombie and proc.started_at <= label.created_at + START_SLACK


def judge_database(db: ScratchDatabase, now: datetime, grace: timedelta, host: str, processes) -> Item:
    def item(remove: bool, reason: str, age: float | None = None) -> Item:
        return Item("database", db.target, remove, reason, age, db.server, db.name)

    if REPLACED_MARK in db.name:
        return item(False, "a replace-restore's kept original: only a person drops it")
    label = ScratchLabel.parse(db.comment)
    if label is None:
        return item(False, "not labelled by this tool (a user's database, or made before labels): "
                    "drop it by hand if it is a leftover")  # fmt: skip
    age = now - label.created_at
    maker = f"pid {label.pid} on {label.host}" + (f", run {label.run_id}" if label.run_id else "")
    alive = maker_alive(label, host, processes)
    if alive:
        return item(False, f"its maker ({maker}) is still running", _hours(age))
    if db.connections:
        return item(False, f"{db.connections} open connection(s): still in use", _hours(age))
    if age < grace:
        return item(False, f"{_hours(age)} h old, younger than the {_hours(grace)} h grace period", _hours(age))
    state = "dead" if alive is False else "not checkable from here"
    return item(True, f"made by {maker} ({state}), {_hours(age)} h old", _hours(age))


def throwaway_dir(proc: Process, roots: Iterable[Path]) -> Path | None:
    """The `cbd-redis-*` dir under a temp root that a redis-server runs in, if any. Its cwd tells: the
    throwaway is started with `--dir <that dir>` (its command line is rewritten by redis' process title)."""
    if not proc.name.startswith("redis-server") or not proc.cwd:
        return None
    path = Path(proc.cwd)
    return path if path.name.startswith(REDIS_DIR_PREFIX) and path.parent in roots else None


def _is_python(proc: Process | None) -> bool:
    return proc is not None and not proc.zombie and Path(proc.exe).name.startswith("python")


def judge_server(proc: Process, workdir: Path, parent: Process | None, now: datetime, grace: timedelta) -> Item:
    age = now - proc.started_at
    # The run that started it is a Python process and its parent; once it died, init (or a reaper) adopted it.
    if proc.ppid != 1 and _is_python(parent):
        remove, reason = False, f"its run (pid {proc.ppid}) is still running"
    elif age < grace:
        remove, reason = False, f"orphaned, but {_hours(age)} h old: younger than the grace period"
    else:
        remove, reason = True, f"orphaned (parent pid {proc.ppid}), {_hours(age)} h old"
    return Item("redis-server", f"pid {proc.pid} in {workdir}", remove, reason, _hours(age), pid=proc.pid,
                started_at=proc.started_at, path=str(workdir))  # fmt: skip


def _inside(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(f"{root}/")


def judge_temp(
    entry: TempEntry, processes: dict[int, Process] | None, ending: set[int], now: datetime, grace: timedelta
) -> Item:
    age = now - entry.modified_at

    def item(remove: bool, reason: str) -> Item:
        return Item("temp", str(entry.path), remove, reason, _hours(age), path=str(entry.path))

    if not entry.ours:
        return item(False, "owned by another user")
    if processes is None:
        return item(False, "cannot tell whether a process uses it (no /proc)")
    users = sorted(
        p.pid
        for p in processes.values()
        if p.pid not in ending and (_inside(p.cwd, entry.path) or any(_inside(f, entry.path) for f in p.open_paths))
    )
    if users:
        return item(False, f"in use by pid {', '.join(map(str, users))}")
    if age < grace:
        return item(False, f"modified {_hours(age)} h ago, within the {_hours(grace)} h grace period")
    return item(True, f"unused, last modified {_hours(age)} h ago")


def plan_sweep(found: Survey, now: datetime, grace: timedelta, host: str | None = None) -> SweepPlan:
    """Decide, touching nothing, what the survey's leftovers are: removable, or kept and why."""
    if grace < timedelta(0):
        raise ValueError("the grace period cannot be negative")
    host = host or socket.gethostname()
    plan = SweepPlan(skipped=list(found.skipped))
    plan.items += [judge_database(db, now, grace, host, found.processes) for db in found.databases]
    servers = [
        judge_server(proc, workdir, found.processes.get(proc.ppid), now, grace)
        for proc in (found.processes or {}).values()
        if not proc.zombie and (workdir := throwaway_dir(proc, found.roots))
    ]
    plan.items += servers
    ending = {i.pid for i in servers if i.remove}  # their dirs are free once they are stopped
    owned = {i.path for i in servers if i.remove}  # removing such a server removes its dir too
    plan.items += [judge_temp(e, found.processes, ending, now, grace) for e in found.temp if str(e.path) not in owned]
    return plan


# -------------------------------------------------------------------------------------------- apply


def _stop_process(item: Item, timeout: float = 10.0) -> str:
    proc = read_process(item.pid)
    if proc is None or proc.zombie or proc.started_at != item.started_at:
        return "already gone"
    os.kill(item.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read_process(item.pid)
        if now is None or now.zombie:
            return "terminated"
        time.sleep(0.05)
    os.kill(item.pid, signal.SIGKILL)  # redis-server exits on SIGTERM at once; this one hung
    return "killed"


def remove(item: Item) -> str:
    """Remove one planned item; returns what was done. Raises (BackupError) naming what failed and why."""
    try:
        if item.kind == "database":
            # No WITH (FORCE): a session that connected since the plan makes the drop fail instead of being cut.
            with item.server.connect(autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(item.name)))
            return "dropped"
        if item.kind == "redis-server":
            done = _stop_process(item)
            shutil.rmtree(item.path, ignore_errors=True)
            return done
        path = Path(item.path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return "deleted"
    except BackupError:
        raise
    except Exception as exc:  # noqa: BLE001 - psycopg and OS errors alike: name the item and the cause
        hint = {
            "database": "A session still connected means it is in use (the next sweep retries); a missing "
            "privilege means the sweep must connect as the database's owner",
            "redis-server": "Stop it by hand (kill the pid) if it is still there",
            "temp": "Check the folder's permissions",
        }[item.kind]
        text = item.server.redact(str(exc)) if item.server else str(exc)
        raise BackupError(f"Could not remove {item.kind} {item.target}: {text.strip()}. {hint}") from None
