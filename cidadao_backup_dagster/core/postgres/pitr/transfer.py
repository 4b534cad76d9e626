"""Restore one database as of an instant onto a target server (managed ones too): recover the cluster in a
throwaway server, dump the database there through the usual backup path (exported snapshot, exact row counts,
manifest), then restore that dump with the usual verified restore (staging database, row counts, rename-swap,
a replaced database kept), or recover rows from it with the usual recover_rows. Nothing new decides anything
about the target: the same refusals, the same undo."""

from __future__ import annotations

from collections.abc import Iterator
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
from .server import quiet


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
    server_bin_dir: BinDir = None,
    **options,
) -> AsOfResult:
    """Database `database` of `source` as it was at `target_time`, restored as `dbname` on `server`. `options`
    are restore_backup's (replace, confirm, jobs, post_restore_*, tmp_dir, bin_dir, identities, say, ...);
    `tmp_dir`, `identities` and `say` serve the recovery too, `bin_dir` the dump of the recovered copy."""
    instant = parse_instant(target_time)
    check_hook_variables(options.get("post_restore_env", ()))
    # The same refusals as a plain restore, before the long recovery too.
    check_target(server, dbname, replace=options.get("replace", False), confirm=options.get("confirm", ""))
    with dump_as_of(storage, source, database, instant, server_bin_dir, options) as (scratch, dump, recovered):
        result = restore_backup(scratch, dump, server, dbname, **options)
        return AsOfResult(result, recovered.plan, recovered.recovered_to, recovered.stop_record)


@contextmanager
def dump_as_of(
    storage: Storage, source: str, database: str, instant: datetime, server_bin_dir: BinDir, options: dict
) -> Iterator[tuple[LocalStorage, Manifest, RecoveredServer]]:
    """A dump of `database` as of the instant, in a scratch storage inside the throwaway server's folder (removed
    with it, whatever happens): what the dump-based restore and row recovery take. From `options`: identities,
    tmp_dir and say (the recovery), bin_dir (pg_dump)."""
    say = options.get("say") or quiet
    recovered = restore_to_instant(
        storage, source=source, target_time=instant, identities=options.get("identities"), bin_dir=server_bin_dir,
        tmp_dir=options.get("tmp_dir"), say=say,
    )  # fmt: skip
    try:
        held = recovered.databases()
        if database not in held:
            raise RefusedError(
                f"Database {database} did not exist at {iso(instant)}; the cluster held {', '.join(sorted(held))}"
            )
        say(f"Dumping {database} as of {iso(instant)} from the recovered copy")
        scratch = LocalStorage(recovered.work / "dump")
        dump = backup_postgres(
            recovered.conn(database),
            scratch,
            series="pitr",
            partition=f"{instant:%Y-%m-%dT%H%M%SZ}",
            settings=BackupSettings(pg_bin_dir=options.get("bin_dir")),
            extra={"as_of": iso(instant), "source": source},
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
    server_bin_dir: BinDir = None,
    **options,
) -> RowsAsOfResult:
    """Rows of `table` matching `where` as they were at `target_time`, copied back into the live table (the
    usual recover_rows: dry run by default, ON CONFLICT DO NOTHING or UPDATE). `options` are recover_rows'
    (scratch_server, dry_run, on_conflict, sample_rows, tmp_dir, bin_dir, identities, say)."""
    instant = parse_instant(target_time)
    check_filter(where)  # refused before the long recovery
    with dump_as_of(storage, source, live.dbname, instant, server_bin_dir, options) as (scratch, dump, recovered):
        rows = recover_rows(scratch, dump, live, table, where, **options)
        return RowsAsOfResult(rows, recovered.plan, recovered.recovered_to)
