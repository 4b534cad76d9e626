"""The sweeper: what a killed run leaves (a SIGKILLed drill's scratch database, an orphaned throwaway
redis-server, temp files) is removed, audited; what is in use, a `_replaced_` database or a user's database
is never touched. Real processes, a real PostgreSQL, real redis-servers; the plan's rules also as data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.postgres.backup import backup_postgres
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.protection.audit import read_audit
from cidadao_backup_dagster.core.protection.scratch import (
    DRILL_PREFIX,
    RECOVER_PREFIX,
    ScratchLabel,
    create_scratch_database,
    scratch_name,
)
from cidadao_backup_dagster.core.protection.sweeper import (
    Process,
    ScratchDatabase,
    Survey,
    TempEntry,
    plan_sweep,
    read_process,
)
from cidadao_backup_dagster.core.redis.server import ThrowawayRedis
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.demo import seed

from .conftest import url_with_dbname

HOST = socket.gethostname()

DRILL_SCRIPT = """
import sys, time
from pathlib import Path
from cidadao_backup_dagster.core.postgres.drill import run_drill
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.redis.server import ThrowawayRedis
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage

def say(message):
    print(message, flush=True)
    time.sleep(3600)  # the scratch database exists now: wait here to be killed

root, series, url = sys.argv[1:]
run_drill(LocalStorage(Path(root)), series, PgConnection.from_url(url), source="sweeptest", partition="2026-10-01",
          say=say)
"""

REDIS_SCRIPT = """
import sys, tempfile, time
from pathlib import Path
from cidadao_backup_dagster.core.redis.server import ThrowawayRedis

server = ThrowawayRedis(Path(tempfile.mkdtemp(prefix="cbd-redis-drill-", dir=sys.argv[1])))
print(server.proc.pid, flush=True)
time.sleep(3600)  # the throwaway is up: wait here to be killed
"""


def databases(admin_url: str, prefix: str) -> list[str]:
    with psycopg.connect(admin_url) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,))]


def label_database(admin_url: str, name: str, label: ScratchLabel) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(label.to_comment()))
        )


def started(args: list[str], **kwargs) -> tuple[subprocess.Popen, str]:
    """A Python child running `args`, and the first line it prints (it prints once it is where it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True, **kwargs)
    line = proc.stdout.readline().strip()
    assert line, f"the child exited with {proc.wait()} before it was ready"
    return proc, line


def sigkill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    proc.stdout.close()


def alive(pid: int) -> bool:
    found = read_process(pid)
    return found is not None and not found.zombie


def run_sweep(**config) -> dg.ExecuteInProcessResult:
    return (
        build_defs()
        .resolve_job_def("sweep_scratch")
        .execute_in_process(
            run_config={"ops": {"sweep_scratch_op": {"config": config}}},
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    )


def output_metadata(result) -> dict:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.event_specific_data.metadata.items()}


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("OFFSITE_STORAGE_URL", "DRILL_DATABASE_URL", "RESTORE_TARGET_PASSWORD", "BACKUP_SOURCES_FILE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "scratch").mkdir()
    monkeypatch.setenv("RESTORE_TMPDIR", str(tmp_path / "scratch"))  # never sweep the shared /tmp in a test
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return tmp_path


@pytest.fixture
def children():
    """Processes a test starts (and pids of their orphans): killed at teardown whatever happened."""
    procs: list[subprocess.Popen] = []
    pids: list[int] = []
    yield procs, pids
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_sigkilled_drill_and_an_orphaned_redis_server_are_swept(
    env, monkeypatch, make_database, pg_admin_url, drop_later, children
):
    procs, orphans = children
    # A backup to drill.
    source = make_database("cbd_sweep_src")
    seed(PgConnection.from_url(source), investigations=300)
    monkeypatch.setenv("DATABASE_URL", source)
    series = "postgres/sweeptest/daily"
    backup_postgres(PgConnection.from_url(source), LocalStorage(env / "backups"), series=series, partition="2026-11-30")

    # A drill, SIGKILLed while its scratch database exists.
    drill, said = started([DRILL_SCRIPT, str(env / "backups"), series, url_with_dbname(pg_admin_url, "postgres")])
    procs.append(drill)
    assert "scratch database" in said
    (killed_scratch,) = databases(pg_admin_url, f"{DRILL_PREFIX}sweeptest_")
    drop_later.append(killed_scratch)
    sigkill(drill)

    # What must survive: a replace-restore's kept original (labelled, by a dead maker, old), a user's database
    # that only shares the prefix (no label), and the scratch database of a run still alive (this process).
    dead_label = ScratchLabel(datetime.now(UTC) - timedelta(days=3), HOST, drill.pid)
    replaced = make_database("cbd_restore_orders_replaced_20261101")
    label_database(pg_admin_url, replaced.rsplit("/", 1)[1], dead_label)
    users = make_database(RECOVER_PREFIX + "users")
    live_scratch = scratch_name(DRILL_PREFIX, "sweep_live")
    drop_later.append(live_scratch)
    create_scratch_database(PgConnection.from_url(pg_admin_url), live_scratch)

    # Temp entries: a leftover archive, a leftover dir, one still open by a live process, one not ours by name.
    scratch = env / "scratch"
    (scratch / "cbd-restore-left.dump").write_bytes(b"x" * 1000)
    (scratch / "cbd-redis-restore-left").mkdir()
    (scratch / "cbd-redis-restore-left" / "dump.rdb").write_bytes(b"REDIS0011")
    held = scratch / "cbd-restore-held.dump"
    held.write_bytes(b"y")
    with open(held, "rb") as f:
        procs.append(subprocess.Popen(["sleep", "600"], stdin=f))
    (scratch / "unrelated.txt").write_text("not ours")

    # A throwaway redis-server whose run was SIGKILLed (orphaned), and one whose run lives (this process).
    runner, said = started([REDIS_SCRIPT, str(scratch)])
    procs.append(runner)
    orphan = int(said)
    orphans.append(orphan)
    sigkill(runner)
    deadline = time.monotonic() + 10  # the kernel reparents it at once; a readiness wait, not a timing assertion
    while read_process(orphan).ppid == runner.pid and time.monotonic() < deadline:
        time.sleep(0.05)
    (orphan_dir,) = scratch.glob("cbd-redis-drill-*")
    assert alive(orphan) and read_process(orphan).ppid != runner.pid

    (scratch / "cbd-redis-drill-live").mkdir()
    live_redis = ThrowawayRedis(scratch / "cbd-redis-drill-live")
    try:
        # By hand it is a dry run: the plan names what would go, nothing goes.
        dry = run_sweep(grace_hours=0)
        assert dry.success
        planned = output_metadata(dry)
        assert planned["dry_run"] and planned["removed"] == 0 and planned["planned_removals"] >= 4
        assert killed_scratch in planned["plan"] and f"pid {orphan}" in planned["plan"]
        assert databases(pg_admin_url, killed_scratch) == [killed_scratch] and alive(orphan)
        assert (scratch / "cbd-restore-left.dump").exists()

        # As the schedule runs it (grace 0 here: everything left is "old").
        result = run_sweep(dry_run=False, grace_hours=0)
        assert result.success
        meta = output_metadata(result)
        assert meta["removed"] == meta["planned_removals"] >= 4
        assert databases(pg_admin_url, killed_scratch) == []
        assert not alive(orphan) and not orphan_dir.exists()
        assert not (scratch / "cbd-restore-left.dump").exists()
        assert not (scratch / "cbd-redis-restore-left").exists()

        # Untouched: in use, not ours, or an operator's undo.
        assert held.exists() and (scratch / "unrelated.txt").exists()
        assert live_redis.proc.poll() is None and (scratch / "cbd-redis-drill-live").exists()
        for url in (replaced, users, source):
            name = url.rsplit("/", 1)[1]
            assert databases(pg_admin_url, name) == [name]
        assert databases(pg_admin_url, live_scratch) == [live_scratch]
        assert "_replaced_" in meta["plan"] and "not labelled by this tool" in meta["plan"]
        assert "still running" in meta["plan"] and "in use by pid" in meta["plan"]

        # Each removal is in the audit trail, with why.
        records = [r for r in read_audit(LocalStorage(env / "backups")) if r["action"] == "sweep"]
        swept = {r["artifact"]: r for r in records}
        (drill_record,) = [r for a, r in swept.items() if a.endswith(f"/{killed_scratch}")]
        assert f"pid {drill.pid} on {HOST}" in drill_record["details"]["reason"]
        assert f"pid {orphan} in {orphan_dir.resolve()}" in swept
        assert str((scratch / "cbd-restore-left.dump").resolve()) in swept
        assert all(r["result"] == "ok" and r["details"]["reason"] for r in records)
    finally:
        live_redis.stop()


# ------------------------------------------------------------------------------------ the plan, as data

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(hours=6)
SERVER = PgConnection.from_url("postgresql://postgres:s3cret-pw@db.example:5432/postgres")
ROOT = Path("/var/tmp/restore")


def db(name: str, *, hours: float = 7, host: str = HOST, pid: int = 4242, connections: int = 0, label=True):
    comment = ScratchLabel(NOW - timedelta(hours=hours), host, pid).to_comment() if label else None
    return ScratchDatabase(SERVER, name, comment, connections)


def proc(pid: int, *, ppid: int = 1, name: str = "python", hours: float = 7, exe="/usr/bin/python3.11", cwd=""):
    return Process(pid, ppid, name, NOW - timedelta(hours=hours), False, exe, cwd)


def decisions(found: Survey) -> dict[str, tuple[bool, str]]:
    return {i.target.rsplit("/", 1)[-1]: (i.remove, i.reason) for i in plan_sweep(found, NOW, GRACE, HOST).items}


def test_plan_removes_only_old_unused_labelled_leftovers():
    found = Survey(
        databases=[
            db("cbd_drill_dead_00000001"),
            db("cbd_drill_young_00000002", hours=1),
            db("cbd_recover_other_host_00000003", host="worker-7"),
            db("cbd_recover_other_host_young_00000004", host="worker-7", hours=5),
            db("cbd_drill_alive_00000005", pid=100, hours=100),
            db("cbd_drill_reused_pid_00000006", pid=101),
            db("cbd_restore_busy_00000007", connections=2),
            db("cbd_restore_orders_replaced_20261101", hours=1000),
            db("cbd_restore_users", label=False),
        ],
        processes={100: proc(100, hours=101), 101: proc(101, hours=1)},  # 101 started after its label: reused
    )
    got = decisions(found)
    removed = {name for name, (remove, _) in got.items() if remove}
    assert removed == {"cbd_drill_dead_00000001", "cbd_recover_other_host_00000003", "cbd_drill_reused_pid_00000006"}
    assert "grace period" in got["cbd_drill_young_00000002"][1]
    assert "grace period" in got["cbd_recover_other_host_young_00000004"][1]
    assert "still running" in got["cbd_drill_alive_00000005"][1]
    assert "2 open connection(s)" in got["cbd_restore_busy_00000007"][1]
    assert "only a person drops it" in got["cbd_restore_orders_replaced_20261101"][1]
    assert "not labelled" in got["cbd_restore_users"][1]
    assert all("s3cret" not in line for line in plan_sweep(found, NOW, GRACE, HOST).describe())


def test_plan_for_throwaway_servers_and_temp_entries():
    orphan_dir, live_dir = ROOT / "cbd-redis-drill-aaaa", ROOT / "cbd-redis-restore-bbbb"
    processes = {
        10: proc(10, hours=50),  # a live run
        11: proc(11, ppid=1, name="redis-server", exe="/usr/bin/redis-server", cwd=str(orphan_dir)),
        12: proc(12, ppid=10, name="redis-server", exe="/usr/bin/redis-server", cwd=str(live_dir)),
        13: proc(13, ppid=1, name="redis-server", exe="/usr/bin/redis-server", cwd="/srv/redis"),  # not a throwaway
        14: Process(
            14, 10, "pg_restore", NOW, False, "/usr/bin/pg_restore", "/", (), (str(ROOT / "cbd-restore-a.dump"),)
        ),
    }
    old, young = NOW - timedelta(hours=8), NOW - timedelta(hours=2)
    found = Survey(
        processes=processes,
        roots=(ROOT,),
        temp=[
            TempEntry(orphan_dir, old, True),
            TempEntry(live_dir, old, True),
            TempEntry(ROOT / "cbd-restore-a.dump", old, True),
            TempEntry(ROOT / "cbd-restore-b.dump", old, True),
            TempEntry(ROOT / "cbd-restore-c.dump", young, True),
            TempEntry(ROOT / "cbd-restore-d.dump", old, False),
        ],
    )
    plan = plan_sweep(found, NOW, GRACE, HOST)
    assert [(i.kind, i.target) for i in plan.remove] == [
        ("redis-server", f"pid 11 in {orphan_dir}"),
        ("temp", str(ROOT / "cbd-restore-b.dump")),
    ]
    kept = {i.target: i.reason for i in plan.keep}
    assert kept[f"pid 12 in {live_dir}"] == "its run (pid 10) is still running"
    assert kept[str(live_dir)] == "in use by pid 12"
    assert kept[str(ROOT / "cbd-restore-a.dump")] == "in use by pid 14"
    assert "grace period" in kept[str(ROOT / "cbd-restore-c.dump")]
    assert kept[str(ROOT / "cbd-restore-d.dump")] == "owned by another user"
    assert not any(t.startswith("pid 13 ") for t in kept)  # a redis-server outside the temp root is not ours
    # Without /proc nothing about processes can be told: temp entries stay, databases go by age alone.
    blind = plan_sweep(Survey(databases=[db("cbd_drill_x_00000001")], temp=found.temp, roots=(ROOT,)), NOW, GRACE)
    assert [i.kind for i in blind.remove] == ["database"]
    assert {i.reason for i in blind.keep} == {
        "cannot tell whether a process uses it (no /proc)",
        "owned by another user",
    }
    with pytest.raises(ValueError, match="negative"):
        plan_sweep(found, NOW, timedelta(hours=-1))
