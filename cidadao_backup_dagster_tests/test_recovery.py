"""Recovery against real PostgreSQL: restore_postgres, recover_rows and the restore drill, each round trip,
and every refusal path leaving the target untouched."""

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from cidadao_backup_dagster.core.artifacts.manifest import iso
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.errors import BackupError
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.postgres.restore import replaced_name, swap_into_place
from cidadao_backup_dagster.core.protection.audit import read_audit
from cidadao_backup_dagster.core.protection.scratch import STAGING_PREFIX, scratch_name
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.demo import seed

from .conftest import drop_database, newest_manifest_path, unique_name, url_with_dbname
from .pg_schema import compare_databases, create_object_kinds

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("OFFSITE_STORAGE_URL", "RESTORE_TMPDIR", "DRILL_DATABASE_URL", "RESTORE_TARGET_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return tmp_path


def run(job, config=None, partition=None):
    op = {"restore_postgres": "restore_postgres_op", "recover_rows": "recover_rows_op"}.get(job)
    run_config = {"ops": {op: {"config": config or {}}}} if op else None
    return (
        build_defs()
        .resolve_job_def(job)
        .execute_in_process(
            run_config=run_config,
            partition_key=partition,
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    )


def failure_message(result) -> str:
    return error_text(next(e for e in result.all_events if e.is_step_failure).event_specific_data.error)


def error_text(error) -> str:
    """The message of a Dagster error and of every error in its cause chain (retries wrap the cause)."""
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def output_metadata(result) -> dict:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.event_specific_data.metadata.items()}


def backed_up(monkeypatch, url, partition="2026-11-24"):
    monkeypatch.setenv("DATABASE_URL", url)
    result = run("postgres_daily_backup_job", partition=partition)
    assert result.success
    return result


def db_exists(admin_url, name) -> bool:
    with psycopg.connect(admin_url) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def leftover_databases(admin_url, prefix) -> list[str]:
    with psycopg.connect(admin_url) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",))]


@pytest.fixture
def demo_source(make_database, env, monkeypatch):
    url = make_database("cbd_rec")
    seed(PgConnection.from_url(url), investigations=400)
    backed_up(monkeypatch, url)
    return url


# ------------------------------------------------------------------------------------ restore_postgres


def test_restore_postgres_round_trip_of_every_object_kind(make_database, env, monkeypatch, pg_admin_url, drop_later):
    source = make_database("cbd_restore_src")
    create_object_kinds(source)
    backed_up(monkeypatch, source)
    target = unique_name("cbd_restored")
    drop_later.append(target)
    result = run("restore_postgres", {"target_database": target, "jobs": 2})
    assert result.success, failure_message(result)
    meta = output_metadata(result)
    assert meta["target"].endswith(f"/{target}") and meta["rows"] > 0 and meta["duration_s"] > 0
    assert compare_databases(source, url_with_dbname(pg_admin_url, target)) == []
    assert staging_databases(pg_admin_url, target) == [] and "replaced_database" not in meta


def test_restore_refuses_a_non_empty_database_and_changes_nothing(demo_source, pg_admin_url, make_database):
    occupied = make_database("cbd_occupied")
    with psycopg.connect(occupied) as conn:
        conn.execute("CREATE TABLE precious (v text)")
        conn.execute("INSERT INTO precious VALUES ('keep me')")
    name = PgConnection.from_url(occupied).dbname
    for config in (
        {"target_database": name},
        {"target_database": name, "replace_existing": True},
        {"target_database": name, "replace_existing": True, "confirm_database_name": name + "x"},
    ):
        result = run("restore_postgres", config)
        assert not result.success
        message = failure_message(result)
        assert "Refusing" in message and "confirm_database_name" in message and "Nothing was changed" in message
    with psycopg.connect(occupied) as conn:
        assert conn.execute("SELECT v FROM precious").fetchall() == [("keep me",)]
        assert conn.execute("SELECT to_regclass('investigations')").fetchone()[0] is None


def test_restore_replaces_with_confirmation_and_keeps_the_old_database(
    demo_source, make_database, env, pg_admin_url, drop_later
):
    occupied, name = precious_database(make_database)
    result, replaced = restore_over(name, pg_admin_url, drop_later)
    assert result.success, failure_message(result)
    with psycopg.connect(occupied) as conn:
        assert conn.execute("SELECT count(*) FROM investigations").fetchone()[0] == 400
        assert conn.execute("SELECT to_regclass('precious')").fetchone()[0] is None
        label = "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s"
        assert conn.execute(label, (name,)).fetchone()[0] is None  # live: no scratch label for the sweeper
    # The replaced database is kept, renamed, with its rows; its name is in the metadata and the audit record.
    assert len(replaced) == 1 and re.fullmatch(rf"{name}_replaced_\d{{8}}T\d{{6}}Z", replaced[0])
    with psycopg.connect(url_with_dbname(pg_admin_url, replaced[0])) as conn:
        assert conn.execute("SELECT count(*) FROM precious").fetchone()[0] == 3
    assert output_metadata(result)["replaced_database"] == replaced[0]
    (record,) = [r for r in read_audit(LocalStorage(env / "backups")) if r["action"] == "restore"]
    assert record["result"] == "ok" and record["details"]["replaced_database"] == replaced[0]
    assert staging_databases(pg_admin_url, name) == []


def restore_over(name, admin_url, drop_later=None, *, confirm=True):
    """restore_postgres into the existing database `name`; returns (result, the `_replaced_` databases left)."""
    config = {"replace_existing": True, "confirm_database_name": name} if confirm else {}
    result = run("restore_postgres", {"target_database": name, **config})
    replaced = leftover_databases(admin_url, f"{name}_replaced_")
    if drop_later is not None:
        drop_later.extend(replaced)
    return result, replaced


def staging_databases(admin_url, target) -> list[str]:
    return leftover_databases(admin_url, scratch_name(STAGING_PREFIX, target)[:-8])


def precious_database(make_database) -> tuple[str, str]:
    url = make_database("cbd_precious")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE precious (v text)")
        conn.execute("INSERT INTO precious SELECT 'keep ' || g FROM generate_series(1, 3) g")
    return url, PgConnection.from_url(url).dbname


def assert_untouched(url, admin_url, name):
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM precious").fetchone()[0] == 3
        assert conn.execute("SELECT to_regclass('investigations')").fetchone()[0] is None
    assert staging_databases(admin_url, name) == []
    assert leftover_databases(admin_url, f"{name}_replaced_") == []


@pytest.fixture
def app_role(pg_admin_url):
    """A NOLOGIN role, dropped at teardown (request it before the databases that use it)."""
    role = unique_name("cbd_gone_role")
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
    yield role
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_replace_restore_failing_in_pg_restore_leaves_the_target_as_it_was(
    app_role, make_database, env, monkeypatch, pg_admin_url
):
    """The role exists while the backup is taken and is gone before the restore (a server without it)."""
    source = make_database("cbd_owned")
    with psycopg.connect(source) as conn:
        conn.execute("CREATE TABLE owned (v int)")
        conn.execute("INSERT INTO owned SELECT generate_series(1, 10)")
        conn.execute(f"ALTER TABLE owned OWNER TO {app_role}")
    backed_up(monkeypatch, source)
    drop_database(pg_admin_url, PgConnection.from_url(source).dbname)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE {app_role}")
    url, name = precious_database(make_database)
    result, _ = restore_over(name, pg_admin_url)
    assert not result.success
    assert_untouched(url, pg_admin_url, name)
    message = failure_message(result)
    assert "pg_restore failed" in message and app_role in message and "no_owner" in message
    assert f"{name} was not changed" in message


def test_replace_restore_with_row_counts_unlike_the_manifest_leaves_the_target(
    demo_source, env, make_database, pg_admin_url
):
    (folder,) = env.glob("backups/postgres/*/daily/2026-11-24")
    path = newest_manifest_path(folder)
    manifest = json.loads(path.read_text())
    manifest["contents"]["tables"]["public.investigations"] += 1
    path.write_text(json.dumps(manifest))
    url, name = precious_database(make_database)
    result, _ = restore_over(name, pg_admin_url)
    assert not result.success
    assert_untouched(url, pg_admin_url, name)
    message = failure_message(result)
    assert "public.investigations: backup has 401 rows, restored 400" in message and "was not changed" in message


def test_restore_into_an_empty_existing_database_keeps_it_renamed(demo_source, make_database, pg_admin_url, drop_later):
    empty = make_database("cbd_empty")
    name = PgConnection.from_url(empty).dbname
    result, replaced = restore_over(name, pg_admin_url, drop_later, confirm=False)
    assert result.success, failure_message(result)
    assert len(replaced) == 1 and output_metadata(result)["replaced_database"] == replaced[0]
    with psycopg.connect(empty) as conn:
        assert conn.execute("SELECT count(*) FROM investigations").fetchone()[0] == 400


def test_replace_gives_the_new_database_the_old_ones_owner(
    app_role, demo_source, make_database, pg_admin_url, drop_later
):
    url, name = precious_database(make_database)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} OWNER TO {app_role}")
    result, _ = restore_over(name, pg_admin_url, drop_later)
    assert result.success, failure_message(result)
    with psycopg.connect(url) as conn:
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert owner[0] == app_role


def test_swap_rolls_back_when_the_second_rename_fails(make_database, pg_admin_url):
    url, name = precious_database(make_database)
    server = PgConnection.from_url(pg_admin_url)
    with pytest.raises(BackupError, match=f"{name} is as it was"):
        swap_into_place(server, "cbd_restore_no_such_staging_db", name, replace_existing=True, say=print)
    assert_untouched(url, pg_admin_url, name)


def test_replaced_name_fits_postgres_identifier_limit():
    at = datetime(2026, 11, 24, 13, 5, 9, tzinfo=UTC)
    assert replaced_name("app", at) == "app_replaced_20261124T130509Z"
    long = "é" * 31 + "x"  # 63 bytes: truncated on a character boundary
    name = replaced_name(long, at)
    assert len(name.encode()) <= 63 and name.endswith("_replaced_20261124T130509Z") and name.startswith("é")


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"backup": "2020-01-01"}, "No backup for partition 2020-01-01"),
        ({"backup": "yesterday"}, "not a partition key"),
        ({"backup_set": "offsite"}, "OFFSITE_STORAGE_URL"),
    ],
)
def test_restore_refusals_never_create_the_target(demo_source, pg_admin_url, drop_later, config, expected):
    target = unique_name("cbd_never")
    drop_later.append(target)
    result = run("restore_postgres", {"target_database": target, **config})
    assert not result.success
    assert expected in failure_message(result)
    assert not db_exists(pg_admin_url, target)


def test_restore_with_no_valid_backup(make_database, env, monkeypatch, pg_admin_url, drop_later):
    monkeypatch.setenv("DATABASE_URL", make_database("cbd_nobackup"))
    target = unique_name("cbd_never")
    drop_later.append(target)
    result = run("restore_postgres", {"target_database": target})
    assert not result.success and "No valid backup" in failure_message(result)
    assert not db_exists(pg_admin_url, target)


def test_restore_refuses_an_object_whose_sha256_changed(demo_source, env, pg_admin_url, drop_later):
    (dump,) = env.glob("backups/postgres/*/daily/2026-11-24/*.dump.zst")
    data = bytearray(dump.read_bytes())
    data[-100] ^= 0xFF  # same size, different bytes
    dump.write_bytes(bytes(data))
    target = unique_name("cbd_never")
    drop_later.append(target)
    result = run("restore_postgres", {"target_database": target})
    assert not result.success and "SHA-256" in failure_message(result)
    assert not db_exists(pg_admin_url, target)


def test_post_restore_command_sees_the_restored_database(demo_source, pg_admin_url, drop_later):
    target = unique_name("cbd_post")
    drop_later.append(target)
    command = 'psql "$DATABASE_URL" -qc "CREATE TABLE post_restore_marker AS SELECT current_database() AS db"'
    result = run("restore_postgres", {"target_database": target, "post_restore_command": command})
    assert result.success, failure_message(result)
    with psycopg.connect(url_with_dbname(pg_admin_url, target)) as conn:
        assert conn.execute("SELECT db FROM post_restore_marker").fetchone()[0] == target


def test_restore_job_from_the_cli_with_a_config_file(demo_source, env, tmp_path, pg_admin_url, drop_later):
    """`dg launch --job restore_postgres -c config.yaml`, the Launchpad's twin."""
    target = unique_name("cbd_cli")
    drop_later.append(target)
    config = tmp_path / "restore.yaml"
    config.write_text(f"ops:\n  restore_postgres_op:\n    config:\n      target_database: {target}\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    cmd = [str(Path(sys.executable).with_name("dg")), "launch", "-m", "cidadao_backup_dagster.definitions"]
    cmd += ["--job", "restore_postgres", "-c", str(config)]
    out = subprocess.run(cmd, env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    with psycopg.connect(url_with_dbname(pg_admin_url, target)) as conn:
        assert conn.execute("SELECT count(*) FROM investigations").fetchone()[0] == 400


# ---------------------------------------------------------------------------------------- recover_rows


def table_digest(url, table="investigations"):
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t"
        ).fetchone()


def test_recover_rows_dry_run_then_real_run(demo_source, pg_admin_url):
    before = table_digest(demo_source)
    with psycopg.connect(demo_source) as conn:
        deleted = conn.execute("DELETE FROM investigations WHERE status = 'failed' RETURNING id").fetchall()
        conn.execute("UPDATE investigations SET query = 'edited after the backup' WHERE status = 'pending'")
    edited = table_digest(demo_source)
    assert len(deleted) > 10

    dry = run("recover_rows", {"where": "status = 'failed'"})
    assert dry.success, failure_message(dry)
    meta = output_metadata(dry)
    assert meta["dry_run"] and meta["would_insert"] == len(deleted) and meta["inserted"] == 0
    assert len(meta["sample"]) == 5 and all(row["status"] == "failed" for row in meta["sample"])
    assert table_digest(demo_source) == edited  # the dry run wrote nothing

    real = run("recover_rows", {"where": "status IN ('failed', 'pending')", "dry_run": False})
    assert real.success, failure_message(real)
    meta = output_metadata(real)
    assert meta["inserted"] == len(deleted) and meta["updated"] == 0
    with psycopg.connect(demo_source) as conn:  # exactly the deleted rows came back; edits were kept
        assert conn.execute("SELECT count(*) FROM investigations WHERE status = 'failed'").fetchone()[0] == len(deleted)
        kept = conn.execute("SELECT count(*) FROM investigations WHERE query = 'edited after the backup'").fetchone()[0]
        assert kept > 0
    assert table_digest(demo_source)[0] == before[0]

    update = run("recover_rows", {"where": "status = 'pending'", "dry_run": False, "on_conflict": "update"})
    assert update.success and output_metadata(update)["updated"] == kept
    assert table_digest(demo_source) == before  # now identical to the backup
    assert leftover_databases(pg_admin_url, "cbd_recover_") == []


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"where": "no_such_column = 1"}, "does not work on public.investigations"),
        ({"where": "TRUE", "table": "missing_table"}, "not in backup"),
        ({"where": "TRUE", "backup": "2020-01-01"}, "No backup for partition"),
    ],
)
def test_recover_rows_failures_leave_no_temporary_database(demo_source, pg_admin_url, config, expected):
    before = table_digest(demo_source)
    result = run("recover_rows", {"dry_run": False, **config})
    assert not result.success and expected in failure_message(result)
    assert leftover_databases(pg_admin_url, "cbd_recover_") == []
    assert table_digest(demo_source) == before


# --------------------------------------------------------------------------------------------- drills


def drill_checks(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_drill_proves_the_newest_backup_and_leaves_nothing(demo_source, env, pg_admin_url, monkeypatch):
    # An older label, but the newest snapshot (taken after 2026-11-24's): the drill proves the newest data, chosen
    # by snapshot time, never by label.
    backed_up(monkeypatch, demo_source, "2026-11-23")
    result = run("postgres_restore_drill_job", partition="2026-10-01")
    assert result.success
    checks = drill_checks(result)
    assert checks["drill_passed"].passed and checks["drill_duration_within_rto"].passed
    assert checks["recent_passing_drill"].passed
    (mat,) = result.get_asset_materialization_events()
    meta = mat.step_materialization_data.materialization.metadata
    assert meta["proved_backup"].value == "2026-11-23" and meta["passed"].value
    (report,) = env.glob("backups/drills/postgres/*/2026-10-01/report-*.json")
    assert json.loads(report.read_text())["backup_partition"] == "2026-11-23"
    assert leftover_databases(pg_admin_url, "cbd_drill_") == []


def test_drill_on_a_damaged_backup_fails_its_check(demo_source, env, pg_admin_url):
    (dump,) = env.glob("backups/postgres/*/daily/2026-11-24/*.dump.zst")
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    result = run("postgres_restore_drill_job", partition="2026-10-01")
    checks = drill_checks(result)
    assert not checks["drill_passed"].passed and "SHA-256" in checks["drill_passed"].description
    assert checks["drill_passed"].severity == dg.AssetCheckSeverity.ERROR
    assert not checks["recent_passing_drill"].passed
    assert leftover_databases(pg_admin_url, "cbd_drill_") == []


def test_recent_drill_check_fails_when_the_last_pass_is_too_old(demo_source, env):
    source = "cidadao"  # the series is keyed by the source's name (POSTGRES_SOURCE_NAME)
    report = env / "backups" / "drills" / "postgres" / source / "2026-09-01" / "report.json"
    report.parent.mkdir(parents=True)
    old = datetime.now(UTC) - timedelta(days=40)
    report.write_text(
        json.dumps(
            {"passed": True, "partition": "2026-09-01", "backup_partition": "2026-09-30", "finished_at": iso(old)}
        )
    )
    result = run("backup_health_checks_job")
    (check,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "recent_passing_drill" and e.asset_key.path == ["postgres_restore_drill"]
    ]
    assert not check.passed and "40 days ago" in check.description


def test_drill_schedule_runs_monthly_for_the_month_that_ended(env):
    defs = build_defs()
    schedule = defs.resolve_schedule_def("postgres_restore_drill_schedule")
    assert schedule.cron_schedule == "0 5 1 * *"
    tick = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance=instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def()
        ) as context,
    ):
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-01"


# ---------------------------------------------------------------------------- disaster recovery runbook


def runbook_block(title: str) -> str:
    """The fenced bash block right after the heading `title` of docs/recovery.md: the test runs it verbatim."""
    readme = (REPO / "docs" / "recovery.md").read_text()
    match = re.search(re.escape(title) + r".*?```bash\n(.*?)```", readme, re.S)
    assert match, f"docs/recovery.md has no bash block under {title!r}"
    return match.group(1)


def test_runbook_restore_from_a_local_folder_without_dagster(demo_source, env, pg_admin_url, drop_later):
    target = unique_name("cbd_runbook")
    drop_later.append(target)
    source = "cidadao"  # the series is keyed by the source's name (POSTGRES_SOURCE_NAME)
    variables = {
        "BACKUP_DIR": str(env / "backups" / "postgres" / source / "daily"),
        "PARTITION": "2026-11-24",
        "NEW_DB": target,
        "PGHOST": "127.0.0.1",
        "PGUSER": "postgres",
        "WORK": str(env / "work"),
    }
    script = runbook_block("#### 1a. Fetch from a local folder") + runbook_block("#### 2. Check, restore, verify")
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env={**os.environ, **variables},
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert compare_databases(demo_source, url_with_dbname(pg_admin_url, target)) == []


def test_runbook_restore_from_s3_without_dagster(
    make_database, env, monkeypatch, pg_admin_url, drop_later, aws_env, make_bucket
):
    if not subprocess.run(["bash", "-c", "command -v aws"], capture_output=True).returncode == 0:
        pytest.skip("the aws CLI is not installed (pip install awscli)")
    source = make_database("cbd_rbs3")
    seed(PgConnection.from_url(source), investigations=200)
    bucket = make_bucket()
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/cidadao")
    backed_up(monkeypatch, source)
    target = unique_name("cbd_runbook")
    drop_later.append(target)
    variables = {
        "BACKUP_URL": f"s3://{bucket}/cidadao",
        "DB": "cidadao",  # the series' name (POSTGRES_SOURCE_NAME), not the database's
        "AWS_ENDPOINT_URL": aws_env["AWS_ENDPOINT_URL"],
        "PARTITION": "2026-11-24",
        "NEW_DB": target,
        "PGHOST": "127.0.0.1",
        "PGUSER": "postgres",
        "WORK": str(env / "work"),
    }
    script = runbook_block("#### 1b. Fetch from S3-compatible storage") + runbook_block(
        "#### 2. Check, restore, verify"
    )
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env={**os.environ, **variables},
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert compare_databases(source, url_with_dbname(pg_admin_url, target)) == []
