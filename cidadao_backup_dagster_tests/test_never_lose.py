"""Issue 11, "never lose a backup", against real storage: S3 over HTTP (moto, also with IAM enforced and with
Object Lock), a local folder, and real PostgreSQL. Faults come from a proxy in front of moto or from IAM
policies, never from mocks of the code under test.

- Retention with GETs answering 5xx or AccessDenied deletes nothing and fails naming the class and the cause;
  a damaged drill report is reported, not fatal; an unparseable manifest is proven damage and may go.
- Two concurrent runs of one partition both leave valid, restorable artifacts.
- On an Object Lock bucket nothing is ever overwritten: every key has exactly one version.
"""

import multiprocessing
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import boto3
import psycopg
import pytest

from cidadao_backup_dagster.core.artifacts.manifest import all_valid_manifests, read_manifest, valid_manifests
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage, S3Storage
from cidadao_backup_dagster.core.errors import StorageAccessDenied, StorageReadError
from cidadao_backup_dagster.core.postgres.backup import backup_postgres
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.postgres.restore import restore_backup
from cidadao_backup_dagster.core.postgres.verify import verify_pg_artifact
from cidadao_backup_dagster.core.protection.audit import read_audit
from cidadao_backup_dagster.core.protection.retention import Policy, delete_artifact, inventory, plan_retention

from .conftest import MOTO_REGION, MotoServer, make_s3_client, unique_name
from .iam_fixtures import create_user, enforce_iam
from .test_retention import _put

INTERNAL_ERROR = b"<?xml version='1.0'?><Error><Code>InternalError</Code><Message>boom</Message></Error>"
AGES = range(11, 21)  # ten daily backups, 11..20 days old: keep_days 7 and min_keep 3 would delete 7 of them


def ago(n: int, now: datetime) -> str:
    return (now - timedelta(days=n)).strftime("%Y-%m-%d")


def seed_history(storage, series: str, now: datetime, ages=AGES) -> None:
    for n in ages:
        _put(storage, series, ago(n, now), now - timedelta(days=n) + timedelta(hours=1))


def bucket_keys(client, bucket: str) -> list[str]:
    return sorted(o["Key"] for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                  for o in p.get("Contents", []))  # fmt: skip


def get_fault_proxy(upstream: str, status: int, body: bytes):
    """The test_s3_faults proxy, but answering every GetObject (GET /bucket/key) with `status` and `body`;
    listings (GET /bucket?list-type=2), HEADs, PUTs and DELETEs pass through to moto. (Dagster is imported
    lazily in this module so the concurrent-backup child processes start fast.)"""
    from .test_s3_faults import FaultyProxy

    proxy = FaultyProxy(upstream, fail_first=0)
    proxy.get_faults = 0
    base = proxy.server.RequestHandlerClass

    class Handler(base):
        def do_GET(self):
            if urlsplit(self.path).path.strip("/").count("/") == 0:
                return self._handle()  # a bucket-level request (the listing)
            proxy.get_faults += 1
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    proxy.server.RequestHandlerClass = Handler
    return proxy


@pytest.fixture
def retention_env(monkeypatch, tmp_path, make_database, aws_env):
    """DATABASE_URL names the series; the daily class keeps 7 days with a floor of 3; the weekly class lives in
    a local offsite folder (a class whose storage works, to show the others proceed)."""
    db = make_database("cbd_never")
    monkeypatch.setenv("DATABASE_URL", db)
    monkeypatch.setenv("BACKUP_RETENTION_DAYS", "postgres_daily=7,postgres_weekly=30")
    monkeypatch.setenv("RETENTION_MIN_KEEP", "3")
    monkeypatch.setenv("OFFSITE_STORAGE_URL", f"file://{tmp_path}/off")
    dbname = db.rsplit("/", 1)[1]
    offsite, now = LocalStorage(tmp_path / "off"), datetime.now(UTC)
    seed_history(offsite, f"postgres/{dbname}/weekly", now, ages=(40, 47, 54, 61, 68))  # the floor keeps 3
    return dbname, offsite


def run_retention():
    import dagster as dg

    from cidadao_backup_dagster.definitions import build_defs

    instance = dg.DagsterInstance.ephemeral()
    result = build_defs().resolve_job_def("apply_retention").execute_in_process(
        run_config={"ops": {"apply_retention_op": {"config": {"dry_run": False}}}},
        instance=instance, raise_on_error=False,
    )  # fmt: skip
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    failures = [e.event_specific_data for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    failure = "\n".join(f.user_failure_data.description if f.user_failure_data else f.error.message for f in failures)
    return result, failure, logs


def assert_weekly_class_proceeded(dbname, offsite, now):
    left = sorted(m.partition for m in valid_manifests(offsite, f"postgres/{dbname}/weekly"))
    assert left == sorted(ago(n, now) for n in (40, 47, 54))


def test_retention_with_gets_answering_5xx_deletes_nothing(
    retention_env, monkeypatch, make_bucket, s3_client, moto_endpoint
):
    dbname, offsite = retention_env
    bucket, now, series = make_bucket(), datetime.now(UTC), f"postgres/{dbname}/daily"
    seed_history(S3Storage(s3_client, bucket, "ret"), series, now)
    before = bucket_keys(s3_client, bucket)
    assert len(before) == 20
    # botocore's own retry decisions, with its backoff sleeps shortened so the test takes seconds
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, ctx: 0.01)
    with get_fault_proxy(moto_endpoint, 500, INTERNAL_ERROR) as proxy:
        faulty = S3Storage(make_s3_client(proxy.url), bucket, "ret")
        with pytest.raises(StorageReadError) as err:
            inventory(faulty, series)
        assert not isinstance(err.value, StorageAccessDenied) and "InternalError" in str(err.value)
        assert proxy.get_faults >= 3  # every attempt of the client's retry budget (3) answered 500
        monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/ret")
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        result, failure, logs = run_retention()
        assert proxy.get_faults >= 3 + 10  # and the job's production client (max_attempts 10) retried too
    assert not result.success
    assert "postgres_daily (StorageReadError" in failure and "InternalError" in failure
    assert any("postgres_daily: nothing deleted" in m for m in logs)
    assert bucket_keys(s3_client, bucket) == before  # all ten manifests and objects, read straight from moto
    assert_weekly_class_proceeded(dbname, offsite, now)


def _iam_reader_keys(endpoint: str) -> tuple[str, str]:
    """An IAM user that may list and delete but is denied GetObject."""
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=MOTO_REGION,
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:DeleteObject", "s3:PutObject"], "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "*"},
    ]}  # fmt: skip
    return create_user(iam, "retention", policy)


def test_retention_with_access_denied_deletes_nothing(retention_env, monkeypatch, tmp_path):
    dbname, offsite = retention_env
    server = MotoServer(tmp_path / "moto-iam.log")  # its own server: IAM enforcement is process-wide
    try:
        admin = make_s3_client(server.endpoint)
        bucket, now, series = "cbd-iam", datetime.now(UTC), f"postgres/{dbname}/daily"
        admin.create_bucket(Bucket=bucket)
        seed_history(S3Storage(admin, bucket, "ret"), series, now)
        before = bucket_keys(admin, bucket)
        key_id, secret = _iam_reader_keys(server.endpoint)
        enforce_iam(server.endpoint, True)
        reader = boto3.client("s3", endpoint_url=server.endpoint, region_name=MOTO_REGION,
                              aws_access_key_id=key_id, aws_secret_access_key=secret)  # fmt: skip
        assert len(S3Storage(reader, bucket, "ret").list_keys(f"{series}/")) == 20  # the listing is allowed
        with pytest.raises(StorageAccessDenied, match="AccessDenied"):
            inventory(S3Storage(reader, bucket, "ret"), series)
        for name, value in (
            ("AWS_ACCESS_KEY_ID", key_id),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_ENDPOINT_URL", server.endpoint),
            ("BACKUP_STORAGE_URL", f"s3://{bucket}/ret"),
        ):
            monkeypatch.setenv(name, value)
        result, failure, logs = run_retention()
        assert not result.success
        assert "postgres_daily (StorageAccessDenied" in failure and "AccessDenied" in failure
        enforce_iam(server.endpoint, False)
        assert bucket_keys(admin, bucket) == before
    finally:
        server.stop()
    assert_weekly_class_proceeded(dbname, offsite, now)


def test_a_damaged_drill_report_is_reported_and_retention_proceeds(retention_env, monkeypatch, make_bucket, s3_client):
    dbname, _offsite = retention_env
    bucket, now, series = make_bucket(), datetime.now(UTC), f"postgres/{dbname}/daily"
    storage = S3Storage(s3_client, bucket, "ret")
    seed_history(storage, series, now)
    damaged = f"drills/postgres/{dbname}/{ago(30, now)}/report.json"
    storage.put_bytes(damaged, b"{ this is not json")
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/ret")
    result, _failure, logs = run_retention()
    assert result.success
    assert any("damaged" in m and storage.uri(damaged) in m for m in logs), logs
    assert sorted(m.partition for m in valid_manifests(storage, series)) == sorted(ago(n, now) for n in (11, 12, 13))
    assert len(storage.list_keys(f"{series}/")) == 6  # exactly the plan: 7 manifests and their 7 objects went
    deletions = [r for r in read_audit(storage) if r["action"] == "delete"]
    assert len(deletions) == 7 and all(r["result"] == "ok" for r in deletions)
    assert storage.read_bytes(damaged) == b"{ this is not json"  # reported, left alone


def test_an_unparseable_manifest_is_proven_damage_and_goes_once_old_while_floors_hold(storage):
    now, series = datetime.now(UTC), "postgres/cidadao/daily"
    seed_history(storage, series, now)
    newest = storage.list_keys(f"{series}/{ago(11, now)}/")
    (manifest_key,) = [k for k in newest if "/manifest-" in k]
    storage.put_bytes(manifest_key, b'{"partition": "truncated')  # the newest partition's manifest is damaged
    _put(storage, series, ago(1, now), now - timedelta(days=1))
    recent_damaged = storage.list_keys(f"{series}/{ago(1, now)}/")
    for key in [k for k in recent_damaged if "/manifest-" in k]:
        storage.put_bytes(key, b"\x00garbage")  # damaged but recent: left for inspection
    plan = plan_retention(inventory(storage, series), Policy(keep_days=7, min_keep=3), now)
    gone = sorted({a.partition for a in plan.delete})
    assert gone == sorted(ago(n, now) for n in (11, *range(15, 21)))  # the damaged one and the expired ones
    for artifact in plan.delete:
        delete_artifact(storage, series, artifact)
    # the floor is the three newest VALID artifacts: the damaged newest one does not count toward it
    assert [m.partition for m in valid_manifests(storage, series)] == [ago(n, now) for n in (14, 13, 12)]
    assert storage.list_keys(f"{series}/{ago(11, now)}/") == []
    assert storage.list_keys(f"{series}/{ago(1, now)}/") == recent_damaged


# --------------------------------------------------------------------------- concurrent runs, one partition


def _backup_in_child(url: str, where: tuple, barrier, results) -> None:
    """Runs in its own process: once both processes are ready, backs up the same partition."""
    storage = LocalStorage(where[1]) if where[0] == "local" else S3Storage(make_s3_client(where[1]), where[2], "pg")
    barrier.wait(timeout=120)
    began = time.time()
    manifest = backup_postgres(PgConnection.from_url(url), storage, series="postgres/cc/daily", partition="2026-11-24")
    results.put((manifest.data, manifest.key, began, time.time()))


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_concurrent_runs_of_one_partition_both_leave_valid_restorable_artifacts(
    backend, make_database, pg_admin_url, drop_later, tmp_path, request
):
    url = make_database("cbd_conc")
    with psycopg.connect(url, autocommit=True) as conn:  # big enough that the two dumps overlap in time
        conn.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g")
    if backend == "local":
        where, storage = ("local", str(tmp_path / "b")), LocalStorage(tmp_path / "b")
    else:
        bucket = request.getfixturevalue("make_bucket")()
        where = ("s3", request.getfixturevalue("moto_endpoint"), bucket)
        storage = S3Storage(request.getfixturevalue("s3_client"), bucket, "pg")
    ctx = multiprocessing.get_context("spawn")  # two real processes, each with its own pg_dump and S3 client
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_backup_in_child, args=(url, where, barrier, queue)) for _ in range(2)]
    for proc in procs:
        proc.start()
    try:
        runs = [queue.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert max(r[2] for r in runs) < min(r[3] for r in runs)  # the two backups really ran at the same time
    manifests = all_valid_manifests(storage, "postgres/cc/daily")
    assert sorted(m.key for m in manifests) == sorted(r[1] for r in runs)
    assert len({m.artifact_key for m in manifests}) == 2
    assert len(storage.list_keys("postgres/cc/daily/2026-11-24/")) == 4  # two objects, two manifests
    server = PgConnection.from_url(pg_admin_url)
    for manifest in manifests:
        assert verify_pg_artifact(storage, manifest).ok
        target = unique_name("cbd_conc_restore")
        drop_later.append(target)
        result = restore_backup(storage, manifest, server, target)
        assert result.rows == 100000 and manifest.tables == {"public.t": 100000}


# ------------------------------------------------------------------------------ versioning + Object Lock


@pytest.fixture
def locked_bucket(s3_client):
    """A bucket with Object Lock (which turns versioning on) and a 1-day GOVERNANCE default retention."""
    bucket = unique_name("cbd-locked").replace("_", "-")
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3_client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})  # fmt: skip
    assert s3_client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    yield bucket
    versions = s3_client.list_object_versions(Bucket=bucket)
    for v in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
        s3_client.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"], BypassGovernanceRetention=True)
    s3_client.delete_bucket(Bucket=bucket)


def assert_nothing_overwritten(s3_client, bucket: str) -> list[str]:
    versions = s3_client.list_object_versions(Bucket=bucket)
    keys = [v["Key"] for v in versions.get("Versions", [])]
    assert keys and len(keys) == len(set(keys)), "a key was written twice"
    assert not versions.get("DeleteMarkers"), "something was deleted"
    return keys


def test_object_locked_versioned_bucket_never_sees_an_overwrite(
    locked_bucket, s3_client, make_database, pg_admin_url, drop_later
):
    url = make_database("cbd_lock")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g")
    storage, series, conn = S3Storage(s3_client, locked_bucket, "pg"), "postgres/lock/daily", PgConnection.from_url(url)
    first = backup_postgres(conn, storage, series=series, partition="2026-11-23")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DELETE FROM t WHERE id > 60")
    second = backup_postgres(conn, storage, series=series, partition="2026-11-23")
    other = backup_postgres(conn, storage, series=series, partition="2026-11-24")
    assert len(assert_nothing_overwritten(s3_client, locked_bucket)) == 6
    head = s3_client.head_object(Bucket=locked_bucket, Key=f"pg/{first.artifact_key}")
    assert head["ObjectLockMode"] == "GOVERNANCE"  # the bucket's default retention applies to the dumps
    assert read_manifest(storage, series, "2026-11-23") == second
    assert valid_manifests(storage, series) == [second, other]
    assert all_valid_manifests(storage, series) == [first, second, other]
    target = unique_name("cbd_lock_restore")
    drop_later.append(target)
    assert restore_backup(storage, first, PgConnection.from_url(pg_admin_url), target).rows == 100  # superseded, intact


def test_daily_job_on_an_object_locked_bucket(locked_bucket, s3_client, make_database, aws_env, monkeypatch):
    from cidadao_backup_dagster.demo import seed

    from .test_dagster_postgres import run_job

    url = make_database("cbd_lockjob")
    seed(PgConnection.from_url(url), investigations=50)
    for var in ("OFFSITE_STORAGE_URL", "BACKUP_ZSTD_LEVEL", "PG_BIN_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{locked_bucket}/cidadao")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    for _ in range(2):  # a re-run of the partition too: its manifest, object and audit record are all new keys
        result = run_job("postgres_daily_backup_job", "2026-11-24")
        assert result.success
        checks = [e for e in result.get_asset_check_evaluations() if not e.check_name.startswith("storage_")]
        assert checks and all(e.passed for e in checks), [(e.check_name, e.description) for e in checks]
    keys = assert_nothing_overwritten(s3_client, locked_bucket)
    assert len([k for k in keys if "/daily/2026-11-24/manifest-" in k]) == 2
    assert len([k for k in keys if k.endswith(".dump.zst")]) == 2
