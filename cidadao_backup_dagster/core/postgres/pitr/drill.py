"""The monthly PITR drill: two independent backup methods must agree. The cluster is recovered from base backup +
WAL to the snapshot instant of the newest logical dump, in a throwaway server, and every table's exact row count
there is compared with the counts the dump's manifest recorded. The time it takes is the RTO of a restore to an
instant; a report is stored like the restore drills' (drills/postgres-pitr/<source>/<month>/).

Exact on a quiet database. The dump's `timings.snapshot_at` is the start of its snapshot's transaction, recorded
to the whole second (rounded down); recovery replays every commit up to that instant and none after it. A
transaction committing in the fraction of a second between the recorded instant and the snapshot is in the dump
and not in the recovery: under concurrent writes at the dump's time, the counts of the tables it wrote can
differ, and the drill fails naming them (the dump runs at night for this reason; run the drill again on the next
dump before suspecting the archive)."""

from __future__ import annotations

from dataclasses import replace

from ...artifacts.manifest import Manifest, iso, utc_now
from ...artifacts.storage import Storage
from ...errors import BackupError
from ..drill import REPORTS as POSTGRES_DRILLS
from ..drill import RTO_DATABASE_CORRUPTION_S
from ..restore import compare_counts, count_rows, select_backup
from .recovery import RecoveredServer, RecoveryOptions, restore_to_instant

RTO_PITR_S = RTO_DATABASE_CORRUPTION_S  # restore_postgres with target_time serves the same scenarios
# its own folder, not "postgres": retention's drill-proven dump is the restore drill's
REPORTS = replace(POSTGRES_DRILLS, kind="postgres-pitr", title="PITR drill", noun="base backup and WAL", passes_when=(
    "the recovery to the newest dump's snapshot instant held every table's row count of that dump"
))  # fmt: skip
read_report = REPORTS.read_report
newest_passing_report = REPORTS.newest_passing_report


def run_pitr_drill(storage: Storage, dump_series: str, *, source: str, partition: str, **options) -> dict:
    """Recover `source` to the instant of the newest dump of `dump_series` and compare row counts; store the
    report (also when the recovery fails). `options`: RecoveryOptions (identities, bin_dir: the server binaries,
    a folder or a search, tmp_dir, say)."""
    started = utc_now()
    dump = select_backup(storage, dump_series, "latest")  # raises when there is nothing to compare with
    report: dict = {
        "kind": "postgres-pitr-drill",
        "partition": partition,
        "target_time": dump.timings.snapshot_at,
        "backup_snapshot_at": dump.timings.snapshot_at,
        "dump_partition": dump.partition,
        "dump_uri": storage.uri(dump.artifact_key),
        "dump_sha256": dump.stored_sha256,
        "rto_seconds": RTO_PITR_S,
        "started_at": iso(started),
    }
    say = RecoveryOptions(**options).say
    say(f"PITR drill: recovering {source} to {dump.timings.snapshot_at}, the snapshot of dump {dump.partition}")
    try:
        with restore_to_instant(storage, source=source, target_time=dump.taken_at, **options) as server:
            report.update(_compare(server, dump))
    except BackupError as exc:
        report.update(passed=False, problems=[str(exc)])
    report["duration_seconds"] = round((utc_now() - started).total_seconds(), 3)
    report["finished_at"] = iso(utc_now())
    REPORTS.write_report(storage, source, partition, report)
    return report


def _compare(server: RecoveredServer, dump: Manifest) -> dict:
    """What the recovered copy proves: its base (chain), WAL and reach, and every table's count against the dump."""
    plan, database, expected = server.plan, dump.data["source"]["database"], dump.tables
    proved = {
        "backup_partition": plan.base.partition,
        "backup_uri": plan.base.artifact.uri,
        "backup_sha256": plan.base.stored_sha256,
        "base_chain": [m.artifact.uri for m in plan.members],
        "wal_files": len(plan.wal),
        "recovered_to": iso(server.recovered_to) if server.recovered_to else "",
        "database": database,
        "tables": len(expected),
        "rows": sum(expected.values()),
    }
    if database not in server.databases():
        return {**proved, "passed": False, "problems": [f"Database {database} is not in the recovered cluster"]}
    actual = count_rows(server.conn(database), list(expected))
    problems = compare_counts(expected, actual)
    recovered = sum(v or 0 for v in actual.values())
    return {**proved, "passed": not problems, "problems": problems, "rows_recovered": recovered}
