"""PostgreSQL recovery: pick a backup, fetch and verify it, restore it, prove it by counting rows.

Order matters for safety: every refusal (target not empty without confirmation, unknown partition, no
valid backup, SHA-256 mismatch) happens before the target server is touched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from .artifact_reader import is_encrypted, read_artifact
from .errors import BackupError
from .manifest import Manifest, list_partitions, read_manifest, valid_manifests
from .postgres import PgConnection, pg_binary
from .storage import MiB, Storage

log = logging.getLogger(__name__)
Logger = Callable[[str], None]

_PARTITION = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# ------------------------------------------------------------------------------------- pick a backup


def select_backup(storage: Storage, series: str, which: str = "latest") -> Manifest:
    """`latest` = the newest valid partition; otherwise the exact partition key. Errors list what exists."""
    which = (which or "latest").strip()
    if which == "latest":
        valid = valid_manifests(storage, series)
        if not valid:
            raise BackupError(f"No valid backup under {storage.uri(series)}: nothing to restore")
        return valid[-1]
    if not _PARTITION.match(which):
        raise BackupError(f"Backup {which!r} is not a partition key: use YYYY-MM-DD (or 'latest')")
    manifest = read_manifest(storage, series, which)
    if manifest is None:
        known = list_partitions(storage, series)
        hint = f"; the newest are {', '.join(known[-5:])}" if known else "; there are none"
        raise BackupError(f"No backup for partition {which} under {storage.uri(series)}{hint}")
    if storage.size(manifest.artifact_key) != manifest.stored_bytes:
        raise BackupError(f"Backup {which} is not valid: {storage.uri(manifest.artifact_key)} is missing or resized")
    return manifest


# ------------------------------------------------------------------------------------ fetch + verify


def fetch_archive(storage: Storage, manifest: Manifest, tmp_dir: str | None = None, identities=None) -> Path:
    """Download (decrypt) and decompress into a temporary file, checking both SHA-256s against the manifest.
    The caller deletes the file. Nothing is restored from bytes that did not match."""
    if is_encrypted(manifest) and not identities:
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
    raise BackupError(
        f"Refusing to restore into {server.with_dbname(dbname).display()}: it already holds {objects} objects. "
        f"To replace it, set replace_existing: true and confirm_database_name: {dbname!r}; or choose a new "
        "target_database. Nothing was changed"
    )


def create_database(server: PgConnection, dbname: str, *, drop_first: bool = False) -> None:
    with server.connect(autocommit=True) as conn:
        if drop_first:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def drop_database(server: PgConnection, dbname: str) -> None:
    with server.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


# ------------------------------------------------------------------------------------------- restore


def run_pg_restore(
    archive: Path,
    target: PgConnection,
    *,
    jobs: int = 2,
    no_owner: bool = False,
    extra_args: tuple[str, ...] = (),
    bin_dir: str | None = None,
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
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


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
    bin_dir: str | None = None,
    post_restore_command: str = "",
    post_restore_workdir: str | None = None,
    identities: list | None = None,
    say: Logger = log.info,
) -> RestoreResult:
    """Restore `manifest`'s backup into database `dbname` on `server` and verify every table's row count."""
    t0 = time.monotonic()
    state = check_target(server, dbname, replace=replace, confirm=confirm)  # refuses before anything changes
    say(f"Fetching {storage.uri(manifest.artifact_key)} ({manifest.stored_bytes / MiB:,.1f} MiB) and checking SHA-256")
    archive = fetch_archive(storage, manifest, tmp_dir, identities)
    try:
        fetched = time.monotonic()
        target = server.with_dbname(dbname)
        if state == "replace":
            say(f"Replacing existing database {target.display()} (confirmed by name)")
        create_database(server, dbname, drop_first=state == "replace")
        say(f"Restoring into {target.display()} with pg_restore --jobs {jobs}")
        run_pg_restore(archive, target, jobs=jobs, no_owner=no_owner, bin_dir=bin_dir)
        restored = time.monotonic()
    finally:
        archive.unlink(missing_ok=True)
    expected = manifest.tables
    actual = count_rows(target, list(expected))
    mismatches = compare_counts(expected, actual)
    verified = time.monotonic()
    if post_restore_command and not mismatches:
        run_post_restore(post_restore_command, target, workdir=post_restore_workdir, say=say)
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
        mismatches=mismatches,
    )


def run_post_restore(command: str, target: PgConnection, *, workdir: str | None, say: Logger) -> None:
    """Run e.g. `alembic upgrade head` with DATABASE_URL pointing at the restored database."""
    env = {**target.env(), "DATABASE_URL": target.url_with_password()}
    say(f"Running post-restore command: {command}")
    proc = subprocess.run(["bash", "-c", command], cwd=workdir or None, env=env, capture_output=True, text=True)
    output = target.redact((proc.stdout + proc.stderr).strip())
    if output:
        say(output[-4000:])
    if proc.returncode != 0:
        raise BackupError(f"Post-restore command failed (exit code {proc.returncode}): {output[-1000:]}")
