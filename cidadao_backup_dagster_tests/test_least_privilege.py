"""The least-privilege model of docs/least-privilege.md, run for real: every S3 policy is read from the `json`
blocks of that page, given to an IAM user of a moto server that enforces IAM, and the real jobs run with those
credentials (and with the documented PostgreSQL roles, created on the test server):

- each job succeeds with its documented policy;
- with less (the backup worker without s3:PutObject or s3:GetObject, retention as the worker, i.e. without
  s3:DeleteObject, restore without s3:GetObject, lifecycle without s3:PutLifecycleConfiguration) it fails with
  a message naming the missing permission, and nothing stored is lost.
"""

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from botocore.exceptions import ClientError
from psycopg import sql

from cidadao_backup_dagster.core.artifacts.manifest import valid_manifests
from cidadao_backup_dagster.core.artifacts.storage import S3Storage
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.demo import seed

from .conftest import drop_database, unique_name, url_with_dbname
from .iam_fixtures import IamS3
from .redis_fixtures import RedisServer
from .test_retention import _put

DOC = Path(__file__).resolve().parents[1] / "docs" / "least-privilege.md"
BUCKET = "cidadao-ai-backups"
DOC_PREFIX = "prod"  # the storage root the documented policies are written for
ROLES = {"backup-worker", "restore-drill", "retention", "lifecycle"}
PARTITION = "2026-11-24"
SERIES = "postgres/cidadao/daily"  # POSTGRES_SOURCE_NAME's default
OPS = {
    "restore_postgres": "restore_postgres_op",
    "recover_rows": "recover_rows_op",
    "apply_retention": "apply_retention_op",
}
CLEARED = (
    "BACKUP_SOURCES_FILE", "OFFSITE_STORAGE_URL", "REDIS_URL", "BACKUP_AGE_RECIPIENTS", "BACKUP_AGE_IDENTITY_FILE",
    "CIDADAO_ENV", "DRILL_DATABASE_URL", "RESTORE_TARGET_PASSWORD", "RESTORE_TMPDIR", "BACKUP_RETENTION_DAYS",
    "RETENTION_MIN_KEEP", "BACKUP_S3_SSE", "BACKUP_S3_SSE_KMS_KEY_ID", "POSTGRES_SOURCE_NAME", "AWS_SESSION_TOKEN",
    "AWS_PROFILE", "AWS_REGION", "PG_BIN_DIR", "REDIS_SOURCE_NAME", "REDIS_SNAPSHOT_MODE",
)  # fmt: skip


# ----------------------------------------------------------------------------------------- the document


def documented_policies() -> dict[str, dict]:
    """{role: policy} from the page: each `json` block sits under a heading naming its role in backticks."""
    parts = re.split(r"^(#{2,4} .*)$", DOC.read_text(), flags=re.M)
    policies, blocks = {}, 0
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        found = re.findall(r"^```json\n(.*?)^```", body, flags=re.M | re.S)
        blocks += len(found)
        role = re.match(r"#+ `([a-z-]+)`", heading)
        if role and found:
            assert len(found) == 1, f"{heading}: one policy per role"
            policies[role.group(1)] = json.loads(found[0])
    assert blocks == len(policies), "every json block of the page is a role's policy"
    return policies


POLICIES = documented_policies()


def policy(role: str, prefix: str, *, without: tuple[str, ...] = ()) -> dict:
    """The documented policy of `role` for the storage root `prefix` (instead of prod/), minus the `without`
    actions in its Allow statements. moto authorizes HeadBucket as `s3:HeadBucket` where AWS uses s3:ListBucket,
    so wherever s3:ListBucket is allowed on the bucket, that moto name is allowed too."""
    text = json.dumps(POLICIES[role]).replace(
        f"arn:aws:s3:::{BUCKET}/{DOC_PREFIX}/", f"arn:aws:s3:::{BUCKET}/{prefix}/"
    )
    doc = json.loads(text)  # a fresh copy
    statements = []
    for st in doc["Statement"]:
        actions = _actions(st)
        if st["Effect"] == "Allow":
            actions = [a for a in actions if a not in without]
            if "s3:ListBucket" in actions and st["Resource"] == f"arn:aws:s3:::{BUCKET}":
                actions.append("s3:HeadBucket")
        if actions:
            statements.append({**st, "Action": actions})
    missing = set(without) - {a for st in POLICIES[role]["Statement"] for a in _actions(st) if st["Effect"] == "Allow"}
    assert not missing, f"{role} does not grant {missing}: the test would prove nothing"
    return {**doc, "Statement": statements}


def _actions(statement: dict) -> list[str]:
    return [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]


def test_the_page_documents_every_role_with_prefix_scoped_object_access():
    assert set(POLICIES) == ROLES
    for role, doc in POLICIES.items():
        for st in doc["Statement"]:
            resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
            for arn in resources:
                assert arn == f"arn:aws:s3:::{BUCKET}" or arn.startswith(f"arn:aws:s3:::{BUCKET}/"), (role, arn)
                if st["Effect"] == "Allow" and arn != f"arn:aws:s3:::{BUCKET}":
                    assert arn.startswith(f"arn:aws:s3:::{BUCKET}/{DOC_PREFIX}/"), (role, arn)  # never bucket/*
    allowed = {role: {a for st in doc["Statement"] if st["Effect"] == "Allow" for a in _actions(st)}
               for role, doc in POLICIES.items()}  # fmt: skip
    assert "s3:GetObject" in allowed["backup-worker"]  # a worker that cannot read cannot verify
    assert not {"s3:DeleteObject", "s3:DeleteObjectVersion"} & (allowed["backup-worker"] | allowed["restore-drill"])
    assert allowed["lifecycle"] == {"s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration"}


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = IamS3(tmp_path_factory.mktemp("iam") / "moto.log", (BUCKET,))
    try:
        yield server
    finally:
        server.stop()


def _admin(admin_url: str, *statements) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture(scope="module")
def pg(pg_admin_url):
    """The documented PostgreSQL roles (unique names) and a small Cidadão database the backup role may read.
    Module-scoped: set up before, and torn down after, every test's own databases."""
    tag = uuid.uuid4().hex[:8]
    backup, restore, recover = f"cbd_lp_backup_{tag}", f"cbd_lp_restore_{tag}", f"cbd_lp_recover_{tag}"
    dbname = f"cbd_lp_test_{tag}"
    ident = sql.Identifier
    try:
        _admin(
            pg_admin_url,
            sql.SQL("CREATE ROLE {} LOGIN").format(ident(backup)),
            sql.SQL("GRANT pg_read_all_data TO {}").format(ident(backup)),
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(ident(restore)),
            sql.SQL("CREATE ROLE {} LOGIN").format(ident(recover)),
            sql.SQL("CREATE DATABASE {}").format(ident(dbname)),
            sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident(dbname)),
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident(dbname), ident(backup)),
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(ident(dbname), ident(recover)),
        )
        source = url_with_dbname(pg_admin_url, dbname)
        counts = seed(PgConnection.from_url(source), investigations=60)
        _admin(
            source,
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident(recover)),
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON public.investigations TO {}").format(ident(recover)),
        )
        yield {
            "admin": pg_admin_url,
            "source": source,
            "counts": counts,
            "backup_url": _as_role(source, backup),
            "restore_server": _as_role(url_with_dbname(pg_admin_url, "postgres"), restore),
            "recover_url": _as_role(source, recover),
            "roles": (backup, restore, recover),
        }
    finally:
        drop_database(pg_admin_url, dbname)
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            owned = conn.execute(
                "SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = ANY(%s)", ([restore, recover],)
            ).fetchall()
        for (name,) in owned:  # a restore or drill that failed half-way
            drop_database(pg_admin_url, name)
        _admin(pg_admin_url, *(sql.SQL("DROP ROLE IF EXISTS {}").format(ident(r)) for r in (backup, restore, recover)))


def _as_role(url: str, role: str) -> str:
    """The same server and database as `url`, logged in as `role` (trust authentication)."""
    return re.sub(r"^postgresql://[^@/]*@", f"postgresql://{role}@", url)


class Identity:
    """Points the environment at the IAM server as a new user holding `policy`, storage root `prefix`."""

    def __init__(self, mp: pytest.MonkeyPatch, s3: IamS3, pg: dict):
        self.mp, self.s3, self.pg = mp, s3, pg
        for name in CLEARED:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ENDPOINT_URL", s3.endpoint)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
        mp.setenv("DATABASE_URL", pg["backup_url"])

    def use(self, role: str, prefix: str, *, without: tuple[str, ...] = ()) -> tuple[str, str]:
        keys = self.s3.user(unique_name(role.replace("-", "_")), policy(role, prefix, without=without))
        self.mp.setenv("AWS_ACCESS_KEY_ID", keys[0])
        self.mp.setenv("AWS_SECRET_ACCESS_KEY", keys[1])
        self.mp.setenv("BACKUP_STORAGE_URL", f"s3://{BUCKET}/{prefix}")
        return keys


@pytest.fixture
def identity(monkeypatch, s3, pg) -> Identity:
    return Identity(monkeypatch, s3, pg)


def new_prefix() -> str:
    return f"lp-{uuid.uuid4().hex[:8]}"


def run(job: str, *, partition: str | None = None, config: dict | None = None, logs: list | None = None):
    """Runs `job`; returns (result, the failure text: descriptions and every error in each cause chain). The run
    log's messages are appended to `logs` when given."""
    run_config = {"ops": {OPS[job]: {"config": config}}} if config is not None else None
    instance = dg.DagsterInstance.ephemeral()
    result = (
        build_defs()
        .resolve_job_def(job)
        .execute_in_process(partition_key=partition, run_config=run_config, instance=instance, raise_on_error=False)
    )
    if logs is not None:
        logs.extend(e.user_message for e in instance.all_logs(result.run_id))
    texts = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.event_specific_data
            if data.user_failure_data:
                texts.append(data.user_failure_data.description or "")
            error = data.error
            while error is not None:
                texts.append(error.message)
                error = error.cause
    return result, "\n".join(texts)


def checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def assert_checks_pass(result) -> dict:
    """Every check of the run passed, but the bucket-wide storage_* ones (a fresh bucket has no lifecycle rule)."""
    evaluations = {name: e for name, e in checks(result).items() if not name.startswith("storage_")}
    assert evaluations and all(e.passed for e in evaluations.values()), {
        n: e.description for n, e in evaluations.items()
    }
    return evaluations


def audit_records(s3: IamS3, prefix: str) -> list[dict]:
    return [
        json.loads(s3.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in s3.keys(BUCKET, f"{prefix}/audit/")
    ]


def seed_history(s3: IamS3, prefix: str) -> list[str]:
    """Ten daily backups 11..20 days old, written by the admin: keep 7 days with a floor of 3 deletes seven."""
    storage, now = S3Storage(s3.s3, BUCKET, prefix), datetime.now(UTC)
    for n in range(11, 21):
        _put(storage, SERIES, f"{now - timedelta(days=n):%Y-%m-%d}", now - timedelta(days=n) + timedelta(hours=1))
    return s3.keys(BUCKET, prefix)


@pytest.fixture(scope="module")
def backed_up(s3, pg):
    """One daily backup, made by the backup worker (its policy, the backup role): the restore tests' input."""
    prefix = new_prefix()
    with pytest.MonkeyPatch.context() as mp:
        Identity(mp, s3, pg).use("backup-worker", prefix)
        result, failure = run("postgres_daily_backup_job", partition=PARTITION)
    return prefix, result, failure, s3.keys(BUCKET, prefix)


# ------------------------------------------------------------------------------------------ backup worker


def test_backup_worker_backs_up_and_verifies_in_the_same_run(backed_up, s3, pg):
    prefix, result, failure, keys = backed_up
    assert result.success, failure
    evaluations = assert_checks_pass(result)
    assert {"integrity", "size_deviation", "freshness", "encrypted"} <= set(evaluations)
    assert "re-read" in evaluations["integrity"].description
    (manifest,) = valid_manifests(S3Storage(s3.s3, BUCKET, prefix), SERIES)
    assert manifest.data["source"]["user"] == pg["roles"][0]  # dumped by the pg_read_all_data role
    assert manifest.tables == {f"public.{t}": n for t, n in pg["counts"].items()}
    assert any(k.startswith(f"{prefix}/{SERIES}/{PARTITION}/") and k.endswith(".dump.zst") for k in keys)
    actions = {(r["action"], r["result"]) for r in audit_records(s3, prefix)}
    assert {("backup", "ok"), ("verify", "ok")} <= actions


def test_backup_worker_runs_the_export_with_its_checks(identity):
    prefix = new_prefix()
    identity.use("backup-worker", prefix)
    result, failure = run("investigations_json_export_job", partition=PARTITION)
    assert result.success, failure
    assert_checks_pass(result)
    assert any(k.startswith(f"{prefix}/exports/") for k in identity.s3.keys(BUCKET, prefix))


def test_backup_worker_snapshots_redis_and_runs_the_hourly_health_checks(backed_up, identity, tmp_path):
    prefix, *_ = backed_up
    identity.use("backup-worker", prefix)
    server = RedisServer(tmp_path)
    try:
        server.client().set("session:1", "x")
        identity.mp.setenv("REDIS_URL", server.url())
        result, failure = run("redis_snapshot_job", partition="2026-11-24-13:00")
    finally:
        server.stop()
    assert result.success, failure
    evaluations = checks(result)  # (last_save and persistence_config judge the test server's settings, not IAM)
    assert all(evaluations[n].passed for n in ("integrity", "size_deviation", "freshness", "encrypted")), evaluations
    assert any(k.startswith(f"{prefix}/redis/cache/hourly/") for k in identity.s3.keys(BUCKET, prefix))
    result, failure = run("backup_health_checks_job")  # reads every series' manifests and the drill reports
    assert result.success, failure
    assert not [e.description for e in result.get_asset_check_evaluations() if "denied" in (e.description or "")]


def test_retention_with_the_worker_policy_fails_naming_delete_and_deletes_nothing(identity):
    prefix = new_prefix()
    before = seed_history(identity.s3, prefix)
    identity.use("backup-worker", prefix)
    result, failure = run("apply_retention", config={"dry_run": False})
    assert not result.success
    assert "AccessDenied" in failure and "DeleteObject" in failure, failure
    assert [k for k in identity.s3.keys(BUCKET, prefix) if "/audit/" not in k] == before
    assert ("delete", "failed") in {(r["action"], r["result"]) for r in audit_records(identity.s3, prefix)}


def test_backup_worker_without_put_object_fails_naming_it_and_stores_nothing(identity):
    prefix = new_prefix()
    identity.use("backup-worker", prefix, without=("s3:PutObject",))
    result, failure = run("postgres_daily_backup_job", partition=PARTITION)
    assert not result.success
    assert "AccessDenied" in failure and "PutObject" in failure, failure
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # denied is permanent
    assert identity.s3.keys(BUCKET, prefix) == []


def test_backup_worker_without_get_object_cannot_publish_a_backup(identity):
    """The README's old worker policy had no s3:GetObject on the dumps: the HEAD after the upload is denied,
    so no backup is ever published (no manifest)."""
    prefix = new_prefix()
    identity.use("backup-worker", prefix, without=("s3:GetObject",))
    result, failure = run("postgres_daily_backup_job", partition=PARTITION)
    assert not result.success
    assert "access denied" in failure and "s3:GetObject" in failure, failure
    assert valid_manifests(S3Storage(identity.s3.s3, BUCKET, prefix), SERIES) == []


def test_backup_worker_without_list_bucket_fails_naming_it(identity):
    prefix = new_prefix()
    identity.use("backup-worker", prefix, without=("s3:ListBucket",))
    result, failure = run("postgres_daily_backup_job", partition=PARTITION)
    assert not result.success
    assert "ListBucket" in failure, failure


# ---------------------------------------------------------------------------------------- restore / drill


def test_restore_policy_restores_into_a_new_database_and_cannot_touch_backups(backed_up, identity, pg, drop_later):
    prefix, *_ = backed_up
    keys = identity.use("restore-drill", prefix)
    target = unique_name("cbd_lp_restored")
    drop_later.append(target)
    config = {"target_database": target, "target_server_url": pg["restore_server"], "no_owner": True}
    result, failure = run("restore_postgres", config=config)
    assert result.success, failure
    with psycopg.connect(url_with_dbname(pg["admin"], target)) as conn:
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (target,))
        assert owner.fetchone()[0] == pg["roles"][1]
        assert conn.execute("SELECT count(*) FROM investigations").fetchone()[0] == pg["counts"]["investigations"]
    assert ("restore", "ok") in {(r["action"], r["result"]) for r in audit_records(identity.s3, prefix)}
    restorer = identity.s3.client(keys)
    (dump,) = [k for k in identity.s3.keys(BUCKET, f"{prefix}/{SERIES}/") if k.endswith(".dump.zst")]
    for attempt in (
        lambda: restorer.put_object(Bucket=BUCKET, Key=f"{prefix}/{SERIES}/{PARTITION}/forged.dump.zst", Body=b"x"),
        lambda: restorer.delete_object(Bucket=BUCKET, Key=dump),
    ):
        with pytest.raises(ClientError, match="AccessDenied"):
            attempt()
    assert dump in identity.s3.keys(BUCKET, prefix)


def test_restore_policy_runs_the_drill(backed_up, identity, pg):
    prefix, *_ = backed_up
    identity.use("restore-drill", prefix)
    identity.mp.setenv("DRILL_DATABASE_URL", pg["restore_server"])
    result, failure = run("postgres_restore_drill_job", partition="2026-11-01")
    assert result.success, failure
    assert_checks_pass(result)
    assert any(
        k.startswith(f"{prefix}/drills/postgres/cidadao/2026-11-01/report-") for k in identity.s3.keys(BUCKET, prefix)
    )


def test_recover_rows_with_the_restore_policy_and_the_recover_role(backed_up, identity, pg):
    """recover_rows writes through DATABASE_URL (the recover role: rows of one table) and restores its scratch copy
    on DRILL_DATABASE_URL (the restore role: CREATEDB); S3 as restore-drill."""
    prefix, *_ = backed_up
    identity.use("restore-drill", prefix)
    identity.mp.setenv("DATABASE_URL", pg["recover_url"])
    identity.mp.setenv("DRILL_DATABASE_URL", pg["restore_server"])
    with psycopg.connect(pg["source"]) as conn:
        deleted = conn.execute(
            "DELETE FROM investigations WHERE id IN (SELECT id FROM investigations ORDER BY id LIMIT 5) "
            "RETURNING id::text"
        )
        gone = [r[0] for r in deleted]
    where = "id IN (" + ", ".join(f"'{i}'" for i in gone) + ")"
    result, failure = run("recover_rows", config={"where": where, "dry_run": False})
    assert result.success, failure
    with psycopg.connect(pg["source"]) as conn:
        back = conn.execute("SELECT count(*) FROM investigations WHERE id::text = ANY(%s)", (gone,)).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM investigations").fetchone()[0]
    assert back == 5 and total == pg["counts"]["investigations"]
    assert ("recover_rows", "ok") in {(r["action"], r["result"]) for r in audit_records(identity.s3, prefix)}


def test_restore_without_put_object_restores_but_leaves_no_audit_record(backed_up, identity, pg, drop_later):
    """An audit record that cannot be written never hides the operation's outcome (defs/audit.py): the restore
    succeeds and the run log warns, naming PutObject. Nothing fails: the documented grant on audit/ is what keeps
    the trail."""
    prefix, *_ = backed_up
    identity.use("restore-drill", prefix, without=("s3:PutObject",))
    before = [k for k in identity.s3.keys(BUCKET, f"{prefix}/audit/")]
    target = unique_name("cbd_lp_restored")
    drop_later.append(target)
    config = {"target_database": target, "target_server_url": pg["restore_server"], "no_owner": True}
    logs: list[str] = []
    result, failure = run("restore_postgres", config=config, logs=logs)
    assert result.success, failure
    (warning,) = [m for m in logs if "Could not write the audit record for restore" in m]
    assert "AccessDenied" in warning and "PutObject" in warning
    assert identity.s3.keys(BUCKET, f"{prefix}/audit/") == before


def test_restore_without_get_object_fails_naming_it_and_creates_nothing(backed_up, identity, pg, drop_later):
    prefix, *_ = backed_up
    identity.use("restore-drill", prefix, without=("s3:GetObject",))
    target = unique_name("cbd_lp_restored")
    drop_later.append(target)
    config = {"target_database": target, "target_server_url": pg["restore_server"], "no_owner": True}
    result, failure = run("restore_postgres", config=config)
    assert not result.success
    assert "access denied" in failure and "s3:GetObject" in failure, failure
    with psycopg.connect(pg["admin"]) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone() is None


# ------------------------------------------------------------------------------------ retention, lifecycle


def test_retention_policy_deletes_exactly_the_expired_backups(identity):
    prefix = new_prefix()
    seed_history(identity.s3, prefix)
    identity.use("retention", prefix)
    result, failure = run("apply_retention", config={"dry_run": False})
    assert result.success, failure
    left = sorted(m.partition for m in valid_manifests(S3Storage(identity.s3.s3, BUCKET, prefix), SERIES))
    now = datetime.now(UTC)
    assert left == sorted(f"{now - timedelta(days=n):%Y-%m-%d}" for n in (11, 12, 13))  # the floor of 3
    deletions = [r for r in audit_records(identity.s3, prefix) if r["action"] == "delete"]
    assert len(deletions) == 7 and {r["result"] for r in deletions} == {"ok"}


def test_lifecycle_policy_installs_the_tiers_and_less_fails_naming_it(identity):
    prefix = new_prefix()
    identity.use("lifecycle", prefix, without=("s3:PutLifecycleConfiguration",))
    result, failure = run("apply_s3_lifecycle")
    assert not result.success
    assert "AccessDenied" in failure and "PutBucketLifecycleConfiguration" in failure, failure
    identity.use("lifecycle", prefix)
    result, failure = run("apply_s3_lifecycle")
    assert result.success, failure
    rules = identity.s3.s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert [r["ID"] for r in rules] == [f"cidadao-backup-tiers:{prefix}/"]
