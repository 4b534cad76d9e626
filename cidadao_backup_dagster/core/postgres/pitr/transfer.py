"""Restore one database as of an instant onto a target server (managed ones too): recover the cluster in a
throwaway server, dump the database there through the usual backup path (exported snapshot, exact row counts,
manifest), then restore that dump with the usual verified restore (staging database, row counts, rename-swap,
a replaced database kept). Nothing new decides anything about the target: the same refusals, the same undo."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ...artifacts.manifest import iso
from ...artifacts.storage import LocalStorage, Storage
from ...errors import RefusedError
from ..backup import BackupSettings, backup_postgres
from ..client import BinDir, PgConnection
from ..restore import RestoreResult, check_hook_variables, check_target, restore_backup
from .recovery import RecoveryPlan, parse_instant, restore_to_instant

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
    server_bin_dir: str | None = None,
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
    recovered = restore_to_instant(
        storage,
        source=source,
        target_time=instant,
        identities=identities,
        bin_dir=server_bin_dir,
        tmp_dir=tmp_dir,
        say=say,
    )
    try:
        held = recovered.databases()
        if database not in held:
            raise RefusedError(
                f"Database {database} did not exist at {iso(instant)}; the cluster held {', '.join(sorted(held))}"
            )
        # Inside the throwaway server's folder: removed with it, whatever happens.
        scratch = LocalStorage(recovered.work / "dump")
        say(f"Dumping {database} as of {iso(instant)} from the recovered copy")
        dump = backup_postgres(
            recovered.conn(database),
            scratch,
            series="pitr",
            partition=f"{instant:%Y-%m-%dT%H%M%SZ}",
            settings=BackupSettings(pg_bin_dir=bin_dir),
            extra={"as_of": iso(instant), "source": source},
        )
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
    finally:
        recovered.cleanup()
