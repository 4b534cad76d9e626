"""Restore one database as of an instant onto a target server (managed ones too): recover the cluster in a
throwaway server, dump the database there through the usual backup path (exported snapshot, exact row counts,
manifest), then restore that dump with the usual verified restore (staging database, row counts, rename-swap,
a replaced database kept), or recover rows from it with the usual recover_rows. Nothing new decides anything
about the target: the same refusals, the same undo."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from ...artifacts.manifest import Manifest, iso
from ...artifacts.storage import LocalStorage, Storage
from ...errors import RefusedError
from ..backup import BackupSettings, backup_postgres
from ..client import BinDir, PgConnection
from ..recover import RecoverResult, check_filter, recover_rows
from ..restore import RestoreResult, check_hook_variables, check_target, restore_backup
from .recovery import RecoveredServer, RecoveryPlan, parse_instant, restore_to_instant

Logger = Callable[[str], None]


@dataclass
class AsOfResult:
    restore: RestoreResult
    plan: RecoveryPlan
    recovered_to: datetime | None  # the last transaction replayed (at or before the instant)
    stop_record: str | None


def restore_database_as_of(
    storage: Storage,
    *,
    source: str,
    database: str,
    target_time: str | datetime,
    server: PgConnection,
    dbname: str,
    replace: bool = False,
    confirm: str = "",
    jobs: int = 2,
    no_owner: bool = False,
    tmp_dir: str | None = None,
    bin_dir: BinDir = None,
    server_bin_dir: BinDir = None,
    post_restore_command: str = "",
    post_restore_workdir: str | None = None,
    post_restore_env: Sequence[str] = (),
    identities: list | None = None,
    run_id: str = "",
    say: Logger = lambda _msg: None,
) -> AsOfResult:
    """Database `database` of `source` as it was at `target_time`, restored as `dbname` on `server`."""
    instant = parse_instant(target_time)
    check_hook_variables(post_restore_env)
    check_target(server, dbname, replace=replace, confirm=confirm)  # refuse before the long recovery, too
    with dump_as_of(
        storage, source=source, database=database, target_time=instant, identities=identities, bin_dir=bin_dir,
        server_bin_dir=server_bin_dir, tmp_dir=tmp_dir, say=say,
    ) as (scratch, dump, recovered):  # fmt: skip
        result = restore_backup(
            scratch,
            dump,
            server,
            dbname,
            replace=replace,
            confirm=confirm,
            jobs=jobs,
            no_owner=no_owner,
            tmp_dir=tmp_dir,
            bin_dir=bin_dir,
            post_restore_command=post_restore_command,
            post_restore_workdir=post_restore_workdir,
            post_restore_env=post_restore_env,
            run_id=run_id,
            say=say,
        )
        return AsOfResult(result, recovered.plan, recovered.recovered_to, recovered.stop_record)


@contextmanager
def dump_as_of(
    storage: Storage,
    *,
    source: str,
    database: str,
    target_time: datetime,
    identities: list | None,
    bin_dir: BinDir,
    server_bin_dir: BinDir,
    tmp_dir: str | None,
    say: Logger,
) -> Iterator[tuple[LocalStorage, Manifest, RecoveredServer]]:
    """A dump of `database` as of the instant, in a scratch storage inside the throwaway server's folder (removed
    with it, whatever happens): what the dump-based restore and row recovery take."""
    recovered = restore_to_instant(
        storage, source=source, target_time=target_time, identities=identities, bin_dir=server_bin_dir,
        tmp_dir=tmp_dir, say=say,
    )  # fmt: skip
    try:
        held = recovered.databases()
        if database not in held:
            raise RefusedError(
                f"Database {database} did not exist at {iso(target_time)}; the cluster held {', '.join(sorted(held))}"
            )
        say(f"Dumping {database} as of {iso(target_time)} from the recovered copy")
        scratch = LocalStorage(recovered.work / "dump")
        dump = backup_postgres(
            recovered.conn(database),
            scratch,
            series="pitr",
            partition=f"{target_time:%Y-%m-%dT%H%M%SZ}",
            settings=BackupSettings(pg_bin_dir=bin_dir),
            extra={"as_of": iso(target_time), "source": source},
        )
        recovered.stop()  # everything needed is in the dump: free the server's memory for what follows
        yield scratch, dump, recovered
    finally:
        recovered.cleanup()


@dataclass
class RowsAsOfResult:
    rows: RecoverResult
    plan: RecoveryPlan
    recovered_to: datetime | None


def recover_rows_as_of(
    storage: Storage,
    *,
    source: str,
    target_time: str | datetime,
    live: PgConnection,
    table: str,
    where: str,
    scratch_server: PgConnection | None = None,
    dry_run: bool = True,
    on_conflict: str = "nothing",
    sample_rows: int = 5,
    tmp_dir: str | None = None,
    bin_dir: BinDir = None,
    server_bin_dir: BinDir = None,
    identities: list | None = None,
    say: Logger = lambda _msg: None,
) -> RowsAsOfResult:
    """Rows of `table` matching `where` as they were at `target_time`, copied back into the live table (the
    usual recover_rows: dry run by default, ON CONFLICT DO NOTHING or UPDATE)."""
    instant = parse_instant(target_time)
    check_filter(where)  # refused before the long recovery
    with dump_as_of(
        storage, source=source, database=live.dbname, target_time=instant, identities=identities, bin_dir=bin_dir,
        server_bin_dir=server_bin_dir, tmp_dir=tmp_dir, say=say,
    ) as (scratch, dump, recovered):  # fmt: skip
        rows = recover_rows(
            scratch,
            dump,
            live,
            table,
            where,
            scratch_server=scratch_server,
            dry_run=dry_run,
            on_conflict=on_conflict,
            sample_rows=sample_rows,
            tmp_dir=tmp_dir,
            bin_dir=bin_dir,
            say=say,
        )
        return RowsAsOfResult(rows, recovered.plan, recovered.recovered_to)
