"""PostgreSQL recovery: pick a backup, fetch and verify it, restore it, prove it by counting rows.

Order matters for safety: every refusal (target not empty without confirmation, unknown partition, no
valid backup, SHA-256 mismatch) happens before the target server is touched. The restore itself goes into a
labelled staging database and is swapped into place by rename only once its row counts match the manifest;
the database it replaces is kept as `<name>_replaced_<UTC timestamp>`, so every failure leaves the target
as it was and a successful replace can be undone by renaming back.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from ..artifacts.clock import parse_iso
from ..artifacts.manifest import Manifest, all_valid_manifests, list_partitions, newest_valid
from ..artifacts.reader import read_artifact
from ..artifacts.storage import MiB, Storage
from ..errors import BackupError, RefusedError
from ..protection.scratch import SCRATCH_PREFIXES, STAGING_PREFIX, create_scratch_database, scratch_name
from .client import BinDir, PgConnection, pg_binary, restore_client

log = logging.getLogger(__name__)
Logger = Callable[[str], None]

# A daily/weekly partition (2026-11-24) or an on-demand label (2026-12-01T031500Z).
_PARTITION = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{6}Z)?$")
SWAP_ATTEMPTS = 3


# ------------------------------------------------------------------------------------- pick a backup


def select_backup(storage: Storage, series: str, which: str = "latest") -> Manifest:
    """Pick by what a backup holds, never by its label alone. Errors list what exists.

    - `latest`: the valid backup with the newest snapshot time (a late-labelled one counts by its real time);
    - `before:<ISO time>` (e.g. `before:2026-11-24T10:00Z`, the moment of an accidental DELETE): the valid backup
      with the newest snapshot taken before it;
    - a partition key (`2026-11-24`, or an on-demand label): that partition's newest valid backup."""
    which = (which or "latest").strip()
    if which == "latest" or which.startswith("before:"):
        valid = all_valid_manifests(storage, series)  # oldest snapshot first
        if which.startswith("before:"):
            cutoff = _parse_instant(which[len("before:") :])
            valid = [m for m in valid if m.taken_at < cutoff]
        if not valid:
            raise BackupError(f"No valid backup under {storage.uri(series)} for {which!r}: nothing to restore")
        return valid[-1]
    if not _PARTITION.match(which):
        raise RefusedError(
            f"Backup {which!r} is not a partition key: use YYYY-MM-DD, 'latest', or 'before:2026-11-24T10:00Z'"
        )
    manifest = newest_valid(storage, series, which)
    if manifest is None:
        known = list_partitions(storage, series)
        if which in known:
            raise BackupError(
                f"Backup {which} is not valid: every backup of that partition is damaged or its object is missing or "
                "resized. Pick another partition or 'before:<time>'"
            )
        hint = f"; the newest are {', '.join(known[-5:])}" if known else "; there are none"
        raise BackupError(f"No backup for partition {which} under {storage.uri(series)}{hint}")
    return manifest


def _parse_instant(text: str) -> datetime:
    try:
        instant = parse_iso(text.strip())
    except ValueError:
        raise RefusedError(
            f"{text!r} is not a time: write before:2026-11-24T10:00Z (UTC) or with an offset, -03:00"
        ) from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------ fetch + verify


def fetch_archive(storage: Storage, manifest: Manifest, tmp_dir: str | None = None, identities=None) -> Path:
    """Download (decrypt) and decompress into a temporary file, checking both SHA-256s against the manifest.
    The caller deletes the file. Nothing is restored from bytes that did not match."""
    if manifest.encrypted and not identities:
        raise BackupError(
            f"{storage.uri(manifest.artifact_key)} is encrypted: set BACKUP_AGE_IDENTITY_FILE to the age identity "
            "file to restore it"
        )
    root = Path(tmp_dir or tempfile.gettempdir())
    free = shutil.disk_usage(root).free
    if free < manifest.raw_bytes * 1.05:
        raise BackupError(
            f"Not enough space in {root} for the {manifest.raw_bytes / MiB:,.0f} MiB archive "
            f"({free / MiB:,.0f} MiB free). Fix: point RESTORE_TMPDIR at a bigger volume"
        )
    fd, name = tempfile.mkstemp(prefix="cbd-restore-", suffix=".dump", dir=root)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            outcome = read_artifact(storage, manifest, out.write, identities=identities)
        problems = outcome.problems(manifest)
        if outcome.stored_sha256 != manifest.stored_sha256:
            raise BackupError(
                f"SHA-256 of {storage.uri(manifest.artifact_key)} does not match its manifest: the stored object "
                "changed since the backup was taken. Refusing to restore it; pick another backup"
            )
        if problems:
            raise BackupError(f"{storage.uri(manifest.artifact_key)}: {'; '.join(problems)}. Refusing to restore it")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------------ target checks


def database_exists(server: PgConnection, dbname: str) -> bool:
    with server.connect(autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None


def user_object_count(target: PgConnection) -> int:
    """Relations, functions and types outside the system schemas: zero means an empty database."""
    with target.connect(autocommit=True) as conn:
        return conn.execute(
            """SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%')
                    + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%')
                    + (SELECT count(*) FROM pg_largeobject_metadata)"""
        ).fetchone()[0]


def check_target(server: PgConnection, dbname: str, *, replace: bool, confirm: str) -> str:
    """Return 'absent', 'empty' or 'replace'; raise (touching nothing) when the target holds data and the
    operator did not both ask to replace it and repeat its name."""
    if not database_exists(server, dbname):
        return "absent"
    objects = user_object_count(server.with_dbname(dbname))
    if objects == 0:
        return "empty"
    if replace and confirm == dbname:
        return "replace"
    raise RefusedError(
        f"Refusing to restore into {server.with_dbname(dbname).display()}: it already holds {objects} objects. "
        f"To replace it, set replace_existing: true and confirm_database_name: {dbname!r}; or choose a new "
        "target_database. Nothing was changed"
    )


def drop_database(server: PgConnection, dbname: str) -> None:
    with server.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def replaced_name(dbname: str, at: datetime | None = None) -> str:
    """`<dbname>_replaced_<UTC yyyymmddThhmmssZ>`, the name part cut (on a character boundary) to fit 63 bytes."""
    suffix = f"_replaced_{(at or datetime.now(UTC)).astimezone(UTC):%Y%m%dT%H%M%SZ}"
    return dbname.encode()[: 63 - len(suffix)].decode(errors="ignore") + suffix


def swap_into_place(server: PgConnection, staging: str, dbname: str, *, replace_existing: bool, say: Logger) -> str:
    """Rename `staging` to `dbname`, moving an existing `dbname` aside to its `_replaced_` name first. Returns that
    name ('' when there was none). PostgreSQL renames databases transactionally, so all renames happen in one
    transaction: a failure at any point leaves both names as they were (only `dbname`'s sessions were ended)."""
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            return _swap(server, staging, dbname, replace_existing, say)
        except psycopg.errors.ObjectInUse as exc:  # an application pool reconnected between terminate and rename
            error: psycopg.Error = exc
            if attempt < SWAP_ATTEMPTS:
                say(f"Sessions are still connected to {dbname} ({exc}); ending them again")
        except psycopg.Error as exc:
            error = exc
            break
    raise BackupError(
        f"Swapping the restored copy into place as {dbname} failed ({server.redact(str(error)).strip()}); nothing "
        f"was renamed, {dbname} is as it was. Fix the cause (e.g. stop the application that keeps reconnecting, or "
        "make target_server_url name another database than the target) and re-run"
    )


def _swap(server: PgConnection, staging: str, dbname: str, replace_existing: bool, say: Logger) -> str:
    ident, replaced = sql.Identifier, ""
    with server.connect() as conn, conn.transaction():
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba), current_user FROM pg_database WHERE datname = %s", (dbname,)
        ).fetchone()
        if row and not replace_existing:
            raise RefusedError(
                f"{server.with_dbname(dbname).display()} was created while the restore ran, so it was not replaced "
                "and is as it was; the restored copy was dropped. Re-run into another target_database (or, to "
                "replace it, with replace_existing and confirm_database_name)"
            )
        if row:
            replaced = replaced_name(dbname)
            owner, me = row
            if owner != me:  # the application's role keeps owning its database; optional (needs membership)
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident(staging), ident(owner)))
                except psycopg.Error as exc:
                    say(f"Could not give the restored database to {owner} ({exc}); it is owned by {me}")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(dbname), ident(replaced)))
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(staging), ident(dbname)))
        if not dbname.startswith(SCRATCH_PREFIXES):  # live now: the sweeper must never take it for scratch
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(ident(dbname)))
    return replaced


# ------------------------------------------------------------------------------------------- restore


def run_pg_restore(
    archive: Path,
    target: PgConnection,
    *,
    jobs: int = 2,
    no_owner: bool = False,
    extra_args: tuple[str, ...] = (),
    bin_dir: BinDir = None,
) -> None:
    args = [
        pg_binary("pg_restore", bin_dir),
        "--exit-on-error",
        "--no-password",
        f"--jobs={max(1, jobs)}",
        *(["--no-owner", "--no-acl"] if no_owner else []),
        *extra_args,
        "--dbname",
        target.conninfo(),
        str(archive),
    ]
    proc = subprocess.run(args, capture_output=True, env=target.env())
    if proc.returncode != 0:
        err = target.redact(proc.stderr.decode(errors="replace")).strip()
        hint = " (if roles are missing on this server, set no_owner: true)" if "role" in err else ""
        raise BackupError(f"pg_restore failed (exit code {proc.returncode}): {err[-2000:]}{hint}")


def count_rows(target: PgConnection, tables: list[str]) -> dict[str, int | None]:
    """Exact counts for `schema.table` names; None for a table that does not exist."""
    out: dict[str, int | None] = {}
    with target.connect(autocommit=True) as conn:
        for name in tables:
            schema, table = name.split(".", 1)
            if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, table).as_string(conn),)).fetchone()[0]:
                query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
                out[name] = conn.execute(query).fetchone()[0]
            else:
                out[name] = None
    return out


def compare_counts(expected: dict[str, int], actual: dict[str, int | None]) -> list[str]:
    return [
        f"{name}: backup has {rows:,} rows, restored {'no table' if actual.get(name) is None else actual[name]}"
        for name, rows in sorted(expected.items())
        if actual.get(name) != rows
    ]


@dataclass
class RestoreResult:
    target: str
    partition: str
    backup_uri: str
    tables: int
    rows: int
    fetch_seconds: float
    restore_seconds: float
    verify_seconds: float
    total_seconds: float
    mismatches: list[str] = field(default_factory=list)  # always empty now: a mismatch raises RowCountMismatch
    replaced_database: str = ""  # the previous target, renamed and kept (never dropped by a restore)

    @property
    def ok(self) -> bool:
        return not self.mismatches


class RowCountMismatch(BackupError):
    """The restored copy's row counts differ from the backup's manifest (it is never swapped into place)."""

    def __init__(self, mismatches: list[str], outcome: str = ""):
        self.mismatches = mismatches
        super().__init__(
            f"Row counts of the restored copy differ from the backup's manifest: {'; '.join(mismatches)}{outcome}. "
            "Pick another backup"
        )


def restore_backup(
    storage: Storage,
    manifest: Manifest,
    server: PgConnection,
    dbname: str,
    *,
    replace: bool = False,
    confirm: str = "",
    jobs: int = 2,
    no_owner: bool = False,
    tmp_dir: str | None = None,
    bin_dir: BinDir = None,
    post_restore_command: str = "",
    post_restore_workdir: str | None = None,
    post_restore_env: Sequence[str] = (),
    worker_env: Mapping[str, str] | None = None,
    identities: list | None = None,
    run_id: str = "",
    say: Logger = log.info,
) -> RestoreResult:
    """Restore `manifest`'s backup into a staging database on `server`, verify every table's row count, then
    swap it into place as `dbname`. An existing `dbname` (confirmed, or empty) is kept renamed, never dropped:
    an empty one too (rather than restoring into it), so a failure cannot leave half a restore in it and the
    grants and settings it carried stay visible. Any failure drops the staging database and leaves `dbname`
    exactly as it was."""
    t0 = time.monotonic()
    check_hook_variables(post_restore_env)  # a bad name is refused before anything is fetched or changed
    pg_restore = restore_client(manifest, bin_dir)  # no client able to read the archive: refused here too
    bin_dir = pg_restore.bin_dir
    state = check_target(server, dbname, replace=replace, confirm=confirm)  # refuses before anything changes
    target = server.with_dbname(dbname)
    say(f"Fetching {storage.uri(manifest.artifact_key)} ({manifest.stored_bytes / MiB:,.1f} MiB) and checking SHA-256")
    archive = fetch_archive(storage, manifest, tmp_dir, identities)
    # Our own scratch database (a drill's) is restored into directly: it holds nothing to protect and its maker
    # drops it. Anything else is built in a staging database and swapped in by rename.
    direct = dbname.startswith(SCRATCH_PREFIXES) and state != "replace"
    staging = dbname if direct else scratch_name(STAGING_PREFIX, dbname)
    expected = manifest.tables
    untouched = f"{target.display()} was {'not created' if state == 'absent' else 'not changed'}"
    outcome = "" if direct else f". {untouched}; the staging copy was dropped"
    try:
        fetched = time.monotonic()
        restored = _restore_verified(
            server, archive, staging, expected, create=state == "absent" or not direct, run_id=run_id,
            outcome=outcome, jobs=jobs, no_owner=no_owner, bin_dir=bin_dir, say=say,
            announce=f"Restoring into {'scratch' if direct else 'staging'} database {staging} with "
            f"{pg_restore.describe()} --jobs {jobs}"
            + ("" if direct else f"; {target.display()} is not touched until the copy is verified"),
        )  # fmt: skip
        verified = time.monotonic()
        if state != "absent" and not direct:
            say(f"Row counts verified; swapping the copy into place and keeping the current {dbname} renamed")
        replaced = (
            "" if direct else swap_into_place(server, staging, dbname, replace_existing=state != "absent", say=say)
        )
    except BaseException:
        if not direct:
            _drop_staging(server, staging, say)
        raise
    finally:
        archive.unlink(missing_ok=True)
    if replaced:
        say(f"{dbname} now holds backup {manifest.partition}; the previous database is kept as {replaced}")
    if post_restore_command:  # only against the swapped-in database, under its final name
        run_post_restore(
            post_restore_command, target, post_restore_workdir, post_restore_env, worker_env or {}, say, replaced
        )
    return RestoreResult(
        target=target.display(),
        partition=manifest.partition,
        backup_uri=storage.uri(manifest.artifact_key),
        tables=len(expected),
        rows=sum(expected.values()),
        fetch_seconds=round(fetched - t0, 3),
        restore_seconds=round(restored - fetched, 3),
        verify_seconds=round(verified - restored, 3),
        total_seconds=round(time.monotonic() - t0, 3),
        replaced_database=replaced,
    )


def _restore_verified(
    server: PgConnection,
    archive: Path,
    staging: str,
    expected: dict[str, int],
    *,
    create: bool,
    run_id: str,
    outcome: str,
    jobs: int,
    no_owner: bool,
    bin_dir: BinDir,
    say: Logger,
    announce: str,
) -> float:
    """pg_restore into `staging` (created first when `create`) and check every table's row count; raises with
    `outcome` (what was left as it was) on any failure. Returns when the restore ended (monotonic)."""
    try:
        if create:
            create_scratch_database(server, staging, run_id)  # labelled: swept if this run is killed
        say(announce)
        run_pg_restore(archive, server.with_dbname(staging), jobs=jobs, no_owner=no_owner, bin_dir=bin_dir)
        restored = time.monotonic()
        mismatches = compare_counts(expected, count_rows(server.with_dbname(staging), list(expected)))
    except psycopg.Error as exc:  # e.g. CREATE DATABASE without the CREATEDB privilege
        raise BackupError(f"Restoring into {staging} failed ({server.redact(str(exc)).strip()}){outcome}") from None
    except BackupError as exc:
        raise type(exc)(f"{exc}{outcome}") from None
    if mismatches:
        raise RowCountMismatch(mismatches, outcome)
    return restored


def _drop_staging(server: PgConnection, staging: str, say: Logger) -> None:
    """Best effort: a failure here must not hide why the restore failed (the sweeper removes what is left)."""
    try:
        drop_database(server, staging)
    except Exception as exc:  # noqa: BLE001
        say(f"Could not drop the staging database {staging} ({exc}); the scratch sweeper will remove it")


# What every hook gets from the worker's environment; anything else only when the operator names it.
HOOK_BASE_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_hook_variables(names: Sequence[str]) -> None:
    """Refuse names in `post_restore_env` that are not environment variable names, or that the hook gets anyway."""
    bad = [name for name in names if not _ENV_NAME.fullmatch(name)]
    if bad:
        raise RefusedError(
            f"post_restore_env: {', '.join(map(repr, bad))} {'is not a' if len(bad) == 1 else 'are not'} valid "
            "environment variable name(s) (letters, digits and _, not starting with a digit). Nothing was changed"
        )
    if "DATABASE_URL" in names:
        raise RefusedError(
            "post_restore_env: DATABASE_URL cannot be passed through: the hook always gets the restored database's. "
            "Nothing was changed"
        )


def hook_environment(
    target: PgConnection, passthrough: Sequence[str] = (), *, worker_env: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The post-restore hook's whole environment: PATH, HOME, LANG (LC_ALL when set), DATABASE_URL of the restored
    database (its password inside the URL, nowhere else), and the variables the operator named in `passthrough`.
    Never the worker's secrets (Slack token, webhook URL, AWS and Redis credentials, the source's URL).
    `worker_env` is the worker's environment, passed in by the caller. Returns (environment, names asked for but
    not set)."""
    check_hook_variables(passthrough)
    env = {name: worker_env[name] for name in (*HOOK_BASE_VARIABLES, *passthrough) if name in worker_env}
    env["DATABASE_URL"] = target.url_with_password()
    return env, [name for name in passthrough if name not in worker_env]


def run_post_restore(
    command: str,
    target: PgConnection,
    workdir: str | None,
    passthrough: Sequence[str],
    worker_env: Mapping[str, str],
    say: Logger,
    replaced: str = "",
) -> None:
    """Run e.g. `alembic upgrade head` with DATABASE_URL pointing at the restored database, in a minimal
    environment (see hook_environment); its output is shown with the target's password masked. It runs after
    the swap, so a failure says the verified restore is live (and `replaced`, where the previous one is kept)."""
    env, unset = hook_environment(target, passthrough, worker_env=worker_env)
    say(f"Running post-restore command: {command}")
    if unset:
        say(f"post_restore_env: {', '.join(unset)} not set in the worker's environment; the command runs without")
    proc = subprocess.run(["bash", "-c", command], cwd=workdir or None, env=env, capture_output=True, text=True)
    output = target.redact((proc.stdout + proc.stderr).strip())
    if output:
        say(output[-4000:])
    if proc.returncode != 0:
        kept = f"; the previous database is kept as {replaced}" if replaced else ""
        raise BackupError(
            f"Post-restore command failed (exit code {proc.returncode}): {output[-1000:]}. The verified restore is "
            f"live as {target.display()}{kept}"
        )
