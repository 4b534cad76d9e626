"""Issue 12, items 2 and 3, against real PostgreSQL: the post-restore hook runs in a minimal environment (no
worker secret reaches it, so none can be printed), and a recover_rows filter is one read-only expression
evaluated only on the scratch copy (stacked statements, comment and parenthesis tricks are refused before
anything runs; writes fail as read-only; the scratch server can be another one, DRILL_DATABASE_URL)."""

import os
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.errors import RefusedError
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.postgres.recover import _count_matching, check_filter
from cidadao_backup_dagster.core.postgres.restore import hook_environment
from cidadao_backup_dagster.core.protection.audit import read_audit
from cidadao_backup_dagster.definitions import build_defs

from . import test_recovery
from .conftest import drop_database, unique_name, url_with_dbname, url_with_password
from .test_recovery import backed_up, failure_message, leftover_databases, output_metadata, run, table_digest

# test_recovery's fixtures: the storage env (a tmp folder, no drill server) and a seeded, backed-up source.
env = test_recovery.env
demo_source = test_recovery.demo_source

SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-hook-secret-slack-5f1c",
    "ALERT_WEBHOOK_URL": "https://hooks.example.org/services/hook-secret-webhook-77aa",
    "REDIS_TARGET_PASSWORD": "hook-secret-redis-pw-93d2",
    "AWS_SECRET_ACCESS_KEY": "hook-secret-aws-key-0b4e",
}
SOURCE_PASSWORD = "hook-secret-source-pw-61c0"
# A secret no redaction layer knows about: only the minimal environment keeps it out of the hook's output.
UNKNOWN_SECRET = ("PAYMENTS_LICENSE", "hook-secret-unregistered-c3d9")
# bash itself sets these in every shell; everything else the hook sees must come from hook_environment.
BASH_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}


def run_in(instance, job, config):
    op = {"restore_postgres": "restore_postgres_op", "recover_rows": "recover_rows_op"}[job]
    return (
        build_defs()
        .resolve_job_def(job)
        .execute_in_process(run_config={"ops": {op: {"config": config}}}, instance=instance, raise_on_error=False)
    )


def run_logged(job, config):
    """(result, the run's log messages): context.log lines are in the instance's event log, not in all_events."""
    instance = dg.DagsterInstance.ephemeral()
    result = run_in(instance, job, config)
    return result, "\n".join(e.user_message for e in instance.all_logs(result.run_id) if e.user_message)


def everything_written(instance, result, *folders: Path) -> str:
    """The run's event log (messages, metadata, failures, serialized) and every file under `folders` (the
    instance's DAGSTER_HOME: event log, run storage, compute logs; the storage folder: audit records, manifests)."""
    texts = [dg.serialize_value(entry) for entry in instance.all_logs(result.run_id)]
    for folder in folders:
        texts += [p.read_bytes().decode(errors="replace") for p in Path(folder).rglob("*") if p.is_file()]
    return "\n".join(texts)


# ------------------------------------------------------------------------------ item 2: post-restore hook


def test_post_restore_env_shows_no_worker_secret(demo_source, env, monkeypatch, tmp_path, drop_later):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(*UNKNOWN_SECRET)
    monkeypatch.setenv("APP_RELEASE", "release-visible-2026")
    monkeypatch.setenv("DATABASE_URL", url_with_password(demo_source, SOURCE_PASSWORD))  # trust ignores it
    target = unique_name("cbd_hookenv")
    drop_later.append(target)
    config = {
        "target_database": target,
        "post_restore_command": "env; echo hook-finished",
        "post_restore_env": ["APP_RELEASE", "NOT_SET_ANYWHERE"],
    }
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = run_in(instance, "restore_postgres", config)
        assert result.success, failure_message(result)
        messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
        written = everything_written(instance, result, home, env / "backups")

    # Nothing the worker holds as a secret reached the run log, metadata, audit records or DAGSTER_HOME.
    assert "release-visible-2026" in written  # the scan does see what the hook printed
    for secret in (*SECRETS.values(), SOURCE_PASSWORD, UNKNOWN_SECRET[1]):
        assert secret not in written, secret
    (hook_output,) = [m for m in messages if m.endswith("\nhook-finished")]
    seen = dict(line.split("=", 1) for line in hook_output.splitlines() if "=" in line)
    assert set(seen) - BASH_OWN <= {"PATH", "HOME", "LANG", "LC_ALL", "DATABASE_URL", "APP_RELEASE"}
    assert seen["APP_RELEASE"] == "release-visible-2026"  # listed in post_restore_env: it comes through
    assert seen["DATABASE_URL"] == f"postgresql://postgres:***@127.0.0.1:5432/{target}"  # password masked
    assert "PGPASSWORD" not in seen and UNKNOWN_SECRET[0] not in seen
    assert any("NOT_SET_ANYWHERE not set" in m for m in messages)
    (record,) = [r for r in read_audit(LocalStorage(env / "backups")) if r["action"] == "restore"]
    assert record["result"] == "ok"


def test_hook_environment_is_minimal(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("PGPASSWORD", "worker-pgpassword")
    target = PgConnection.from_url("postgresql://app:p%40ss@db.internal:5433/restored")
    hook_env, unset = hook_environment(target, ["AWS_SECRET_ACCESS_KEY", "MISSING_ONE"], worker_env=os.environ)
    assert hook_env["DATABASE_URL"] == "postgresql://app:p%40ss@db.internal:5433/restored"
    assert hook_env["LC_ALL"] == "C.UTF-8"
    assert hook_env["AWS_SECRET_ACCESS_KEY"] == SECRETS["AWS_SECRET_ACCESS_KEY"]  # listed: passed through
    assert set(hook_env) <= {"PATH", "HOME", "LANG", "LC_ALL", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY"}
    assert unset == ["MISSING_ONE"]  # the operator listed it; the worker does not have it


@pytest.mark.parametrize(
    "names, expected",
    [
        (["GOOD_NAME", "1BAD"], "'1BAD' is not a valid environment variable name"),
        (["A-B", "x y"], "'A-B', 'x y' are not valid environment variable name"),
        (["DATABASE_URL"], "DATABASE_URL cannot be passed through"),
    ],
)
def test_post_restore_env_refuses_bad_names_before_anything(demo_source, pg_admin_url, drop_later, names, expected):
    target = unique_name("cbd_never")
    drop_later.append(target)
    result = run(
        "restore_postgres", {"target_database": target, "post_restore_command": "env", "post_restore_env": names}
    )
    assert not result.success
    message = failure_message(result)
    assert expected in message and "Nothing was changed" in message
    assert leftover_databases(pg_admin_url, target) == []


# ------------------------------------------------------------------------------ item 3: one expression


@pytest.mark.parametrize(
    "where, problem",
    [
        ("true; CREATE TABLE pwned(x int)", "';' at character 5 separates statements"),
        ("true) OR (1=1", "')' at character 5 closes a parenthesis the filter did not open"),
        ("status = 'failed' -- AND id = 'x'", "'--' at character 19 starts a comment"),
        ("true /* ; */", "'/*' at character 6 starts a comment"),
        ("status = 'failed", "the string opened at character 10 never closes"),
        ("(true", "1 parenthesis never closes"),
    ],
)
def test_injected_filters_are_refused_before_anything_runs(demo_source, pg_admin_url, where, problem):
    before = table_digest(demo_source)
    home_db = url_with_dbname(pg_admin_url, "postgres")
    result, logs = run_logged("recover_rows", {"where": where, "dry_run": False})
    assert not result.success
    message = failure_message(result)
    assert problem in message and "Nothing was run" in message
    # Refused before the backup was fetched or a scratch database made.
    assert "Recovering rows of investigations" in logs and "temporary database" not in logs
    for url in (demo_source, home_db):
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('pwned')").fetchone()[0] is None
    assert table_digest(demo_source) == before
    assert leftover_databases(pg_admin_url, "cbd_recover_") == []


def test_filters_that_are_one_expression_pass_the_check():
    for where in (
        "created_at > '2026-01-01' AND status = 'done'",
        "note = 'a; b -- c /* d' AND \"odd;name\" = 1",
        "query = E'it\\'s; fine' OR query = $q$ ; -- $q$",
        "id IN (SELECT id FROM t WHERE (a OR b))",
    ):
        assert check_filter(f"  {where}\n") == where
    with pytest.raises(RefusedError, match="separates statements"):
        check_filter("query = E'it\\'s'; DROP TABLE t")


def test_extended_protocol_refuses_stacked_statements_on_its_own(make_database):
    """The second guard: even a filter that slipped past check_filter is sent as one Parse, which the server
    refuses when it holds two statements; nothing of it runs."""
    url = make_database("cbd_guard")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
        conn.execute("INSERT INTO items VALUES (1), (2)")
    with psycopg.connect(url) as conn:  # not even read-only: the protocol alone refuses
        assert _count_matching(conn, "public", "items", "id > 1", "public.items") == 1
        with pytest.raises(RefusedError, match="is more than one statement"):
            _count_matching(conn, "public", "items", "true); CREATE TABLE pwned(x int); SELECT (1", "public.items")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('pwned')").fetchone()[0] is None


@pytest.fixture
def writable_source(make_database, env, monkeypatch):
    """A source with a sequence and a function that writes, both restored into the scratch copy."""
    url = make_database("cbd_ro")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, v text)")
        conn.execute("INSERT INTO items (v) SELECT 'row ' || g FROM generate_series(1, 20) g")
        conn.execute("CREATE TABLE notes (n int)")
        conn.execute(
            "CREATE FUNCTION note_it() RETURNS int LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO notes VALUES (1); RETURN 1; END $$"
        )
    backed_up(monkeypatch, url)
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM items WHERE id > 10")
    return url


@pytest.mark.parametrize("where", ["nextval('items_id_seq') > 0", "id > 10 AND note_it() > 0"])
def test_filters_that_write_fail_as_read_only(writable_source, pg_admin_url, where):
    def state():
        with psycopg.connect(writable_source) as conn:
            return (
                conn.execute("SELECT last_value FROM items_id_seq").fetchone(),
                table_digest(writable_source, "items"),
                conn.execute("SELECT count(*) FROM notes").fetchone(),
            )

    before = state()
    result = run("recover_rows", {"table": "items", "where": where, "dry_run": False})
    assert not result.success
    message = failure_message(result)
    assert "tries to write" in message and "read-only" in message and "Nothing was written" in message
    assert state() == before  # the live server never saw the filter
    assert leftover_databases(pg_admin_url, "cbd_recover_") == []


# ------------------------------------------------------------------------------ the scratch server


@pytest.fixture
def scratch_role(pg_admin_url):
    """A separate login role with CREATEDB only: the scratch server's identity in DRILL_DATABASE_URL."""
    role = unique_name("cbd_scratch_role")
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN CREATEDB")
    yield role
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        owned = conn.execute(
            "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = %s)", (role,)
        ).fetchall()
    for (name,) in owned:
        drop_database(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_recover_rows_uses_the_drill_server_for_its_scratch_copy(demo_source, scratch_role, monkeypatch, pg_admin_url):
    before = table_digest(demo_source)
    where = "created_at > '2026-01-01' AND status = 'completed'"
    with psycopg.connect(demo_source) as conn:
        deleted = conn.execute(f"DELETE FROM investigations WHERE {where} RETURNING id").fetchall()
    assert len(deleted) > 10
    monkeypatch.setenv("DRILL_DATABASE_URL", f"postgresql://{scratch_role}@127.0.0.1:5432/postgres")
    result, logs = run_logged("recover_rows", {"where": where, "dry_run": False})
    assert result.success, failure_message(result)
    meta = output_metadata(result)
    assert meta["matched_in_backup"] == len(deleted) and meta["inserted"] == len(deleted)
    assert table_digest(demo_source) == before  # exactly the rows that were deleted came back
    assert f"on postgresql://{scratch_role}@127.0.0.1:5432/cbd_recover_investigations_" in logs
    assert leftover_databases(pg_admin_url, "cbd_recover_") == []
