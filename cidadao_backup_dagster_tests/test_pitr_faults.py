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
from cidadao_backup_dagster.core.postgres.pitr import archive_wal, base_backup
from cidadao_backup_dagster.core.postgres.pitr.server import check_client
from cidadao_backup_dagster.core.postgres.pitr.transfer import restore_database_as_of

from .conftest import unique_name
from .test_pitr import (  # noqa: F401 - fixtures
    PG15,
    SETTINGS,
    Cluster,
    as_postgres,
    restore_tmp,
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
        restored = restore_database_as_of(
            storage, source=db, database=db, target_time=run.recoverable_until, server=pg.conn(), dbname=target,
            tmp_dir=str(restore_tmp), bin_dir=str(PG15),
        )  # fmt: skip
        assert restored.plan.stop_at_target  # pgbench committed past the instant within the archived WAL

        clock, snapshot = sampler.newest_before(run.recoverable_until)
        assert (run.recoverable_until - clock).total_seconds() < 1  # the bound is the run's end, not earlier
        acknowledged = Counter(
            pg.sql(f"{HISTORY} WHERE pg_visible_in_snapshot(xmin::text::xid8, %s::pg_snapshot)", db, (snapshot,))
        )
        live, recovered = Counter(pg.sql(HISTORY, db)), Counter(pg.sql(HISTORY, target))
        assert sum(acknowledged.values()) >= before
        assert not acknowledged - recovered  # nothing committed before the run's instant is lost
        assert not recovered - live  # nothing that never committed comes back
        lost = sum((live - recovered).values())
        assert lost > 0  # pgbench went on after the run: what it wrote after the run's end is all that is lost
