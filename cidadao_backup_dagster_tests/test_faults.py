"""Fault injection through the Dagster jobs, with the same four promises checked after every fault:
the run fails with a message naming the cause; no manifest (or object) is left for a partial artifact;
the earlier backup is intact and still restorable; retention's plan is unaffected.

Faults covered elsewhere, with the same promises: wrong password (test_password_auth), truncated and
bit-flipped objects (test_dagster_postgres, test_recovery), wrong or missing decryption key
(test_encryption), unknown partition and a restore target that holds data (test_recovery), Redis truncated
RDB and SYNC refused (test_redis_*). See docs/development.md "Fault-injection suite".
"""

import subprocess
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from cidadao_backup_dagster.core.artifacts.manifest import valid_manifests
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage, S3Storage
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.postgres.verify import verify_pg_artifact
from cidadao_backup_dagster.core.protection.retention import Policy, inventory, plan_retention
from cidadao_backup_dagster.demo import seed

from .conftest import free_port, unique_name, url_with_dbname
from .test_recovery import error_text, failure_message, run
from .test_s3_faults import FaultyProxy

EARLIER, FAULTY = "2026-11-23", "2026-11-24"


@pytest.fixture
def world(monkeypatch, tmp_path, make_database, request):
    """A seeded database with one good earlier backup, on local storage or (param "s3") moto."""
    for var in ("OFFSITE_STORAGE_URL", "PG_BIN_DIR", "RESTORE_TMPDIR", "BACKUP_AGE_RECIPIENTS", "CIDADAO_ENV"):
        monkeypatch.delenv(var, raising=False)
    url = make_database("cbd_fault")
    seed(PgConnection.from_url(url), investigations=3000)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    if getattr(request, "param", "local") == "s3":
        env = request.getfixturevalue("aws_env")
        bucket = request.getfixturevalue("make_bucket")()
        monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/faults")
        storage = S3Storage(request.getfixturevalue("s3_client"), bucket, "faults")
        endpoint = env["AWS_ENDPOINT_URL"]
    else:
        monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
        storage, endpoint = LocalStorage(tmp_path / "backups"), None
    assert run("postgres_daily_backup_job", partition=EARLIER).success
    series = "postgres/cidadao/daily"  # POSTGRES_SOURCE_NAME's default
    plan_before = _plan(storage, series)
    return {"url": url, "storage": storage, "series": series, "plan": plan_before, "endpoint": endpoint}


def _plan(storage, series):
    plan = plan_retention(inventory(storage, series), Policy(keep_days=7, min_keep=1), datetime.now(UTC))
    return sorted(a.partition for a in plan.delete), sorted(a.partition for a, _ in plan.keep)


def assert_promises_kept(world, monkeypatch, pg_admin_url, drop_later, *, storage=None):
    storage = storage or world["storage"]
    series = world["series"]
    assert [k for k in storage.list_keys(f"{series}/{FAULTY}/")] == [], "partial artifact left behind"
    (earlier,) = valid_manifests(storage, series)
    assert earlier.partition == EARLIER
    assert verify_pg_artifact(storage, earlier).ok
    assert _plan(storage, series) == world["plan"]
    target = unique_name("cbd_fault_restored")
    drop_later.append(target)
    restored = run("restore_postgres", {"backup": EARLIER, "target_database": target})
    assert restored.success, failure_message(restored)
    with psycopg.connect(url_with_dbname(pg_admin_url, target)) as conn:
        assert conn.execute("SELECT count(*) FROM investigations").fetchone()[0] == 3000


def test_backend_terminated_mid_dump(world, monkeypatch, pg_admin_url, drop_later):
    """pg_dump is made to wait on a lock, then its backend is terminated: a deterministic 'mid-dump'."""
    dbname = PgConnection.from_url(world["url"]).dbname
    locker = psycopg.connect(world["url"])
    locker.execute("LOCK TABLE agent_instances IN ACCESS EXCLUSIVE MODE")

    def kill_pg_dump():
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            for _ in range(600):  # wait (up to a minute) for pg_dump to be blocked on the lock
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name = 'pg_dump' AND wait_event_type = 'Lock'",
                    (dbname,),
                ).fetchall()
                if killed:
                    break
                time.sleep(0.1)
        locker.rollback()  # release the lock so the row counts can finish
        locker.close()

    killer = threading.Thread(target=kill_pg_dump)
    killer.start()
    result = run("postgres_daily_backup_job", partition=FAULTY)
    killer.join()
    # The attempt whose backend died fails with pg_dump's own words; the retry (a transient fault) succeeds.
    (retry,) = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    message = error_text(retry.event_specific_data.error)
    assert "pg_dump failed" in message and "terminating connection due to administrator command" in message
    assert result.success
    objects = world["storage"].list_keys(f"{world['series']}/{FAULTY}/")
    assert len(objects) == 2 and "/manifest-" in objects[-1], objects  # nothing of the failed attempt
    assert sorted(m.partition for m in valid_manifests(world["storage"], world["series"])) == [EARLIER, FAULTY]
    assert verify_pg_artifact(world["storage"], valid_manifests(world["storage"], world["series"])[0]).ok


def test_pg_dump_missing(world, monkeypatch, pg_admin_url, drop_later, tmp_path):
    monkeypatch.setenv("PG_BIN_DIR", str(tmp_path / "no-postgres-client"))
    result = run("postgres_daily_backup_job", partition=FAULTY)
    assert not result.success and "pg_dump not found in PG_BIN_DIR" in failure_message(result)
    monkeypatch.delenv("PG_BIN_DIR")
    assert_promises_kept(world, monkeypatch, pg_admin_url, drop_later)


@pytest.mark.parametrize("world", ["s3"], indirect=True)
def test_storage_unreachable(world, monkeypatch, pg_admin_url, drop_later):
    # Shorten botocore's backoff sleeps between connection attempts (its retry decisions stay its own).
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, ctx: 0.01)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    result = run("postgres_daily_backup_job", partition=FAULTY)
    assert not result.success and "unreachable" in failure_message(result)
    monkeypatch.setenv("AWS_ENDPOINT_URL", world["endpoint"])
    assert_promises_kept(world, monkeypatch, pg_admin_url, drop_later)


@pytest.mark.parametrize("world", ["s3"], indirect=True)
def test_storage_answers_5xx_mid_upload(world, monkeypatch, pg_admin_url, drop_later):
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, ctx: 0.01)
    with psycopg.connect(world["url"]) as conn:  # > 16 MiB stored at zstd level 1: a multipart upload
        conn.execute("CREATE TABLE filler AS SELECT g, md5(g::text) || md5((g * 7)::text) AS v "
                     "FROM generate_series(1, 1500000) g")  # fmt: skip
    monkeypatch.setenv("BACKUP_ZSTD_LEVEL", "1")
    with FaultyProxy(world["endpoint"], fail_first=-1, status=503) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        result = run("postgres_daily_backup_job", partition=FAULTY)
    assert not result.success and proxy.injected > 0
    assert "Writing s3://" in failure_message(result) and "partial upload was removed" in failure_message(result)
    monkeypatch.setenv("AWS_ENDPOINT_URL", world["endpoint"])
    client = world["storage"].client
    assert not client.list_multipart_uploads(Bucket=world["storage"].bucket).get("Uploads")
    with psycopg.connect(world["url"]) as conn:
        conn.execute("DROP TABLE filler")
    assert_promises_kept(world, monkeypatch, pg_admin_url, drop_later)


@pytest.mark.parametrize("world", ["s3"], indirect=True)
def test_slow_storage_still_yields_a_verified_backup(world, monkeypatch):
    """Slowness is not failure: every request delayed, the backup completes and its checks pass."""

    class SlowProxy(FaultyProxy):
        def __init__(self, upstream):
            super().__init__(upstream, fail_first=0)
            handler = self.server.RequestHandlerClass
            original = handler._handle

            def slow(inner):
                time.sleep(0.3)
                return original(inner)

            handler._handle = slow
            handler.do_GET = handler.do_PUT = handler.do_POST = handler.do_DELETE = handler.do_HEAD = slow

    with SlowProxy(world["endpoint"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        result = run("postgres_daily_backup_job", partition=FAULTY)
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations() if e.check_name == "integrity")


def test_disk_full_for_the_restore_temp_file(world, monkeypatch, pg_admin_url, drop_later, tmp_path):
    small = tmp_path / "tiny"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setenv("RESTORE_TMPDIR", str(small))
        target = unique_name("cbd_never")
        drop_later.append(target)
        result = run("restore_postgres", {"backup": EARLIER, "target_database": target})
        assert not result.success
        message = failure_message(result)
        assert "Not enough space" in message and "RESTORE_TMPDIR" in message
        with psycopg.connect(pg_admin_url) as conn:  # the refused restore never created the target
            assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
    monkeypatch.delenv("RESTORE_TMPDIR")
    assert_promises_kept(world, monkeypatch, pg_admin_url, drop_later)
