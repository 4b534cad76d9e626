"""Point-in-time recovery under faults, on private PostgreSQL 15 clusters (test_pitr.py's): the server killed under
pgbench load right after a WAL run loses only what committed after that run's end; a dropped or lost replication
slot is reported by the WAL run, the slot check and the continuity check (never papered over); the RPO the
scheduled WAL runs show, through the real schedule."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.errors import PermanentError
from cidadao_backup_dagster.core.postgres.pitr import (
    WalGap,
    archive_wal,
    base_backup,
    drop_slot,
    plan_recovery,
    restore_to_instant,
    slot_name_for,
)
from cidadao_backup_dagster.core.postgres.pitr.server import check_client
from cidadao_backup_dagster.core.postgres.pitr.transfer import restore_database_as_of

from .conftest import unique_name
from .test_pitr import (  # noqa: F401 - fixtures
    PG15,
    SETTINGS,
    Cluster,
    as_postgres,
    ids,
    insert,
    pitr_env,
    restore_tmp,
    server_now,
    source,
    started_cluster,
)

pytestmark = pytest.mark.skipif(not (PG15 / "initdb").exists(), reason="needs the PostgreSQL 15 server binaries")

HISTORY = "SELECT tid, bid, aid, delta, mtime FROM pgbench_history"


# ------------------------------------------------------------------------------------------ killed under load


def postmaster_pid(cluster: Cluster) -> int:
    return int((cluster.root / "data" / "postmaster.pid").read_text().split()[0])


def kill_server(cluster: Cluster) -> None:
    """kill -9 the postmaster and every process it started (a crash: nothing more is written or sent)."""
    pid = postmaster_pid(cluster)
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    for victim in (pid, *children):
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in (pid, *children)):
        assert time.monotonic() < deadline, "the killed server's processes did not go away"
        time.sleep(0.05)


def restart_server(cluster: Cluster) -> None:
    """Start the crashed cluster again (crash recovery brings back every acknowledged commit)."""
    data = cluster.root / "data"
    subprocess.run(as_postgres([PG15 / "pg_ctl", "-D", data, "-l", cluster.root / "log", "-w", "start"]), check=True)


class SnapshotSampler(threading.Thread):
    """Records, as often as it can, (server clock, a snapshot) from one statement: the snapshot is taken when the
    statement starts, before the clock is read, so every transaction visible in it was acknowledged, hence (with
    synchronous_commit) flushed to WAL, and has a commit timestamp earlier than that clock reading."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.samples, self.stop = url, [], threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as c:
                while not self.stop.is_set():
                    self.samples.append(c.execute("SELECT clock_timestamp(), pg_current_snapshot()::text").fetchone())
                    time.sleep(0.005)
        except psycopg.OperationalError:
            pass  # the server was killed

    def newest_before(self, instant: datetime) -> tuple[datetime, str]:
        return max((s for s in self.samples if s[0] <= instant), key=lambda s: s[0])


def test_killed_under_pgbench_load_right_after_a_wal_run_loses_only_what_committed_after_it(restore_tmp):  # noqa: F811
    """pgbench writes; one WAL run; the server is killed -9 the moment the run ends. Restored to the run's newest
    recoverable instant, every transaction acknowledged before that instant is there (the pgbench_history rows
    visible in a snapshot taken just before it), nothing that was never committed is, and what is lost is only
    what committed after it."""
    storage = LocalStorage(restore_tmp / "backups")
    pgbench = check_client("pgbench", 15, str(PG15))
    with started_cluster(PG15, "autovacuum = off\n") as pg:
        db = unique_name("bench")
        pg.sql(f"CREATE DATABASE {db}")
        bench = [pgbench, "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres"]
        subprocess.run([*bench, "-i", "-s", "1", "-q", db], check=True, capture_output=True)
        conn = pg.conn(db)
        base_backup(conn, storage, source=db, partition="2026-11-30", settings=SETTINGS)

        sampler = SnapshotSampler(pg.url(db))
        load = subprocess.Popen(
            [*bench, "-n", "-c", "2", "-T", "8", db], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            sampler.start()
            time.sleep(2)  # under way
            (before,) = pg.sql("SELECT count(*) FROM pgbench_history", db)[0]
            run = archive_wal(conn, storage, source=db, settings=SETTINGS)
            kill_server(pg)  # the moment the run ends: the archive gets nothing more
        finally:
            sampler.stop.set()
            load.wait(timeout=60)
        sampler.join(timeout=10)
        assert before > 0 and run.raw_bytes > 0 and run.rpo_seconds <= 300

        restart_server(pg)
        target = f"{db}_asof"
        restore_database_as_of(
            storage, source=db, database=db, target_time=run.recoverable_until, server=pg.conn(), dbname=target,
            tmp_dir=str(restore_tmp), bin_dir=str(PG15),
        )  # fmt: skip

        clock, snapshot = sampler.newest_before(run.recoverable_until)
        assert (run.recoverable_until - clock).total_seconds() < 2  # the bound is the run's end, not earlier
        acknowledged = Counter(
            pg.sql(f"{HISTORY} WHERE pg_visible_in_snapshot(xmin::text::xid8, %s::pg_snapshot)", db, (snapshot,))
        )
        live, recovered = Counter(pg.sql(HISTORY, db)), Counter(pg.sql(HISTORY, target))
        assert sum(acknowledged.values()) >= before
        assert not acknowledged - recovered  # nothing committed before the run's instant is lost
        assert not recovered - live  # nothing that never committed comes back
        lost = sum((live - recovered).values())
        assert lost > 0  # pgbench went on after the run: what it wrote after the run's end is all that is lost


# ------------------------------------------------------------------------------------------ the slot


@pytest.fixture(scope="module")
def cluster():
    """This module's own cluster (`source` and `pitr_env` use it): the slot tests change its settings."""
    with started_cluster(PG15) as started:
        yield started


def wal_checks() -> dict[str, object]:
    """The WAL archive's checks, run alone as Dagster runs them (the asset is not materialized)."""
    import dagster as dg

    from cidadao_backup_dagster.defs.postgres import pitr as pitr_defs
    from cidadao_backup_dagster.defs.resources import build_resources
    from cidadao_backup_dagster.defs.sources import default_pg

    wal = pitr_defs.build_wal_asset(default_pg())
    checks = pitr_defs.build_wal_checks(default_pg(), wal)
    result = dg.materialize(
        [wal, *checks], resources=build_resources(), selection=dg.AssetSelection.checks_for_assets(wal)
    )
    assert result.success
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def recycle_wal(cluster: Cluster, db: str, switches: int = 4) -> None:
    """Write and switch past a few segments, then checkpoint: the server removes (recycles) WAL no slot holds."""
    for i in range(switches):
        insert(cluster, db, 1000 + 10 * i, 1009 + 10 * i)
        cluster.sql("SELECT pg_switch_wal()")
    cluster.sql("CHECKPOINT")
    cluster.sql("CHECKPOINT")


def on_server(cluster: Cluster, segment: str) -> bool:
    return bool(cluster.sql("SELECT count(*) FROM pg_ls_waldir() WHERE name = %s", params=(segment,))[0][0])


def archive_resumes_after_the_gap(cluster: Cluster, db: str, storage, first, gap_error, tmp: Path) -> None:
    """What must follow a lost or dropped slot: the run that meets it names the slot, the gap and the fix; the WAL
    continuity check reports the gap (WAL never archived); an instant past it is refused from the old base; once
    a new base backup is taken, the archive goes on and recovers to instants after the gap."""
    slot, segment = slot_name_for(db), first.partial.removesuffix(".partial")
    message = str(gap_error.value)
    assert slot in message and segment in message and "base backup" in message, message
    checks = wal_checks()
    assert checks["slot_retention"].passed  # the slot is back, holding WAL from where this run stopped
    continuity = checks["wal_continuity"]
    assert not continuity.passed and continuity.severity.value == "ERROR"
    assert continuity.description.startswith(f"Missing: {segment}"), continuity.description
    later = server_now(cluster)
    with pytest.raises(WalGap, match=segment):
        plan_recovery(storage, source=db, target_time=later)

    # The fix the message names: a new base backup; the archive went on past the gap, so it is usable at once.
    base_backup(cluster.conn(db), storage, source=db, partition="2026-12-07", settings=SETTINGS)
    insert(cluster, db, 2001, 2010)
    expected = ids(cluster.conn(db))
    instant = server_now(cluster)
    cluster.sql("DELETE FROM items", db)
    run = archive_wal(cluster.conn(db), storage, source=db, settings=SETTINGS)
    assert run.resumed_from  # where the run after the gap stopped
    with restore_to_instant(storage, source=db, target_time=instant, tmp_dir=str(tmp)) as server:
        assert ids(server.conn(db)) == expected


def test_a_dropped_slot_is_reported_and_its_gap_never_papered_over(cluster, source, pitr_env, restore_tmp):  # noqa: F811
    """The slot dropped (by hand, by a failover): the slot check says so at once. While the server still has the
    WAL the archive needs next, a run recreates the slot and streams on: no gap, truly. Once the server has
    removed it, the run recreates the slot but fails naming the slot, the gap and the fix (a new base backup);
    it never claims continuity: the continuity check reports the WAL that was never archived."""
    storage = LocalStorage(pitr_env.parent / "backups")
    conn, slot = cluster.conn(source), slot_name_for(source)
    insert(cluster, source, 1, 10)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    insert(cluster, source, 11, 20)
    archive_wal(conn, storage, source=source, settings=SETTINGS)
    assert {name: e.passed for name, e in wal_checks().items()} == {
        "wal_continuity": True,
        "recoverable_within_rpo": True,
        "slot_retention": True,
    }

    assert drop_slot(conn, slot)
    verdict = wal_checks()["slot_retention"]
    assert not verdict.passed and f"Replication slot {slot} does not exist" in verdict.description
    # Dropped, but nothing removed yet: the next run takes the slot back and the archive stays whole.
    second = archive_wal(conn, storage, source=source, settings=SETTINGS)
    assert second.slot is not None and second.slot.name == slot
    assert all(e.passed for e in wal_checks().values())

    assert drop_slot(conn, slot)
    recycle_wal(cluster, source)
    assert not on_server(cluster, second.partial.removesuffix(".partial"))
    with pytest.raises(PermanentError) as gap_error:
        archive_wal(conn, storage, source=source, settings=SETTINGS)
    archive_resumes_after_the_gap(cluster, source, storage, second, gap_error, restore_tmp)


def test_a_lost_slot_is_reported_and_its_gap_never_papered_over(cluster, source, pitr_env, restore_tmp):  # noqa: F811
    """max_slot_wal_keep_size small, the runs stopped: the server invalidates the slot (wal_status lost). The
    slot check is an ERROR, the run fails naming the slot and the fix; done as told (drop it, let the next run
    recreate it, take a new base backup), the gap is reported and the archive goes on after it."""
    storage = LocalStorage(pitr_env.parent / "backups")
    conn, slot = cluster.conn(source), slot_name_for(source)
    insert(cluster, source, 1, 10)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    insert(cluster, source, 11, 20)
    first = archive_wal(conn, storage, source=source, settings=SETTINGS)
    cluster.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    cluster.sql("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 30
        while (
            cluster.sql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", params=(slot,))[0][0]
            != "lost"
        ):
            assert time.monotonic() < deadline, "the server did not invalidate the slot"
            recycle_wal(cluster, source, 2)
    finally:
        cluster.sql("ALTER SYSTEM RESET max_slot_wal_keep_size")
        cluster.sql("SELECT pg_reload_conf()")

    verdict = wal_checks()["slot_retention"]
    assert not verdict.passed and verdict.severity.value == "ERROR" and "is lost" in verdict.description
    with pytest.raises(PermanentError, match=f"Replication slot {slot} is lost") as refused:
        archive_wal(conn, storage, source=source, settings=SETTINGS)
    assert f"pg_drop_replication_slot('{slot}')" in str(refused.value) and "base backup" in str(refused.value)

    assert drop_slot(conn, slot)  # the fix, as the message says
    with pytest.raises(PermanentError) as gap_error:
        archive_wal(conn, storage, source=source, settings=SETTINGS)
    archive_resumes_after_the_gap(cluster, source, storage, first, gap_error, restore_tmp)


# ------------------------------------------------------------------------------------------ RPO, as scheduled


def test_scheduled_wal_runs_show_an_rpo_within_five_minutes(cluster, source, pitr_env):  # noqa: F811
    """The WAL archive as the daemon runs it: the schedule's tick gives a run request, and the code location's
    job runs it with that request's config and tags; the run's metadata shows the achieved RPO, at most 5 min."""
    import dagster as dg

    from cidadao_backup_dagster.definitions import build_defs

    insert(cluster, source, 1, 10)
    defs = build_defs()
    schedule = defs.resolve_schedule_def("postgres_wal_archive_schedule")
    assert schedule.cron_schedule == "*/5 * * * *"
    job = defs.resolve_job_def("postgres_wal_archive_job")
    with dg.instance_for_test() as instance:
        for tick in range(2):  # the second run resumes where the first stopped
            with dg.build_schedule_context(
                instance=instance,
                scheduled_execution_time=server_now(cluster),
                repository_def=defs.get_repository_def(),
            ) as context:
                (request,) = schedule.evaluate_tick(context).run_requests
            result = job.execute_in_process(
                run_config=request.run_config,
                tags=request.tags,
                partition_key=request.partition_key,
                instance=instance,
            )
            assert result.success
            (materialization,) = result.asset_materializations_for_node("postgres_wal_archive")
            meta = materialization.metadata
            assert 0 <= meta["rpo_seconds"].value <= 300
            assert meta["recoverable_until"].value and meta["end_lsn"].value
            insert(cluster, source, 11 + 10 * tick, 20 + 10 * tick)
    assert meta["resumed_from"].value  # the second run took up where the first left the archive
