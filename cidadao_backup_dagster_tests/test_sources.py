"""Many sources: the YAML sources file (every mistake named before anything runs), and two PostgreSQL
databases and two Redis servers backed up, checked and restored side by side through the generated
definitions, each in its own storage prefix, with per-server pools and per-source schedules."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from cidadao_backup_dagster.core.errors import ConfigurationError
from cidadao_backup_dagster.core.sources import PostgresSourceSpec, RedisSourceSpec, load_sources
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.defs.settings import Settings
from cidadao_backup_dagster.defs.sources import PgBinding, RedisBinding

from .conftest import newest_manifest_path, unique_name, url_with_dbname

pytest_plugins = ["cidadao_backup_dagster_tests.redis_fixtures"]  # redis_server

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "sources.example.yaml"
DAY, HOUR = "2026-11-24", "2026-11-24-13:00"


def write(tmp_path, text: str) -> str:
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------------------ the file


def test_the_example_file_parses_with_its_defaults():
    sources = load_sources(str(EXAMPLE))
    assert [s.name for s in sources.postgres] == ["cidadao", "analytics"]
    assert [s.name for s in sources.redis] == ["cache", "sessions"]
    cidadao, analytics = sources.postgres
    assert sources.export_source is cidadao
    assert cidadao.storage_prefix == "cidadao"  # each source in its own folder unless told otherwise
    assert (analytics.daily_schedule, analytics.daily_retention_days, analytics.weekly_retention_days) == (
        "30 1 * * *",
        14.0,
        30.0,
    )
    assert sources.redis[1].mode == "logical"


def test_without_a_file_there_is_one_implicit_source_of_each():
    sources = load_sources("")
    assert [(s.name, s.url_env) for s in sources.postgres] == [("", "DATABASE_URL")]
    assert [(s.name, s.url_env) for s in sources.redis] == [("", "REDIS_URL")]


def test_pools_name_the_server_never_its_credentials(monkeypatch):
    monkeypatch.setenv("REPORTS_DATABASE_URL", "postgresql://app:s3cret@db.internal:6543/reports")
    monkeypatch.setenv("QUEUE_REDIS_URL", "rediss://:s3cret@queue.internal/0")
    settings = Settings.from_environ()
    reports = PgBinding.of(PostgresSourceSpec(name="reports", url_env="REPORTS_DATABASE_URL"), settings)
    queue = RedisBinding.of(RedisSourceSpec(name="queue", url_env="QUEUE_REDIS_URL"), settings)
    assert reports.pool == "postgres_dump/db.internal:6543"
    assert queue.pool == "redis_snapshot/queue.internal:6379"
    named = PgBinding.of(
        PostgresSourceSpec(name="reports", url_env="REPORTS_DATABASE_URL", server="primary"), settings
    )
    assert named.pool == "postgres_dump/primary"  # an explicit server groups sources behind one DNS name
    assert PgBinding.of(PostgresSourceSpec(), settings).pool == "postgres_dump"  # the one-source default keeps its pool


@pytest.mark.parametrize(
    "text, expected",
    [
        ("postgres:\n  - name: a\n    url: postgresql://u:hunter2@db/x\n", "url_env"),
        ("postgres:\n  - name: a\n    url_env: A\n    colour: red\n", "unknown key(s) colour in postgres source 'a'"),
        ("postgres:\n  - name: a\n  - name: a\n", "a used twice"),
        ("redis:\n  - name: Cache-1\n", "needs a `name` of lowercase letters"),
        ("postgres:\n  - name: a\n    daily_schedule: '@daily'\n", "daily_schedule '@daily' is not a 5-field cron"),
        ("postgres:\n  - name: a\n    daily_retention_days: 0\n", "daily_retention_days must be a positive"),
        ("redis:\n  - name: a\n    mode: fast\n", "mode 'fast'"),
        ("redis:\n  - name: a\n    url_env: 'REDIS URL'\n", "is not a variable name"),
        ("postgres:\n  - name: a\n    storage_prefix: ../elsewhere\n", "is not a relative path"),
        ("postgres:\n  - name: a\n    exports: true\n  - name: b\n    exports: true\n", "more than one source"),
        ("mysql:\n  - name: a\n", "unknown key(s) mysql in the top level"),
        ("postgres: [\n", "is not valid YAML"),
        ("{}\n", "lists no sources"),
    ],
)
def test_mistakes_in_the_file_are_named_with_the_fix(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as info:
        load_sources(path)
    message = str(info.value)
    assert message.startswith("BACKUP_SOURCES_FILE:") and path in message and "Fix:" in message
    assert expected in message
    assert "hunter2" not in message


def test_the_code_location_refuses_to_load_a_broken_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_SOURCES_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigurationError, match="missing.yaml does not exist"):
        build_defs()


# ---------------------------------------------------------------------------- side by side, for real

SOURCES = """
postgres:
  - name: main
    url_env: MAIN_DATABASE_URL
  - name: analytics
    url_env: ANALYTICS_DATABASE_URL
    daily_schedule: "30 1 * * *"
    daily_retention_days: 14
redis:
  - name: cache
    url_env: CACHE_REDIS_URL
  - name: sessions
    url_env: SESSIONS_REDIS_URL
    snapshot_schedule: "*/30 * * * *"
"""


def seed_database(url: str, table: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
        conn.execute(f"INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, {rows}) g")


@pytest.fixture
def many(tmp_path, monkeypatch, make_database, redis_server):
    """Two databases on the local server and two private redis-servers, each with data of its own."""
    main, analytics = make_database("cbd_main"), make_database("cbd_analytics")
    seed_database(main, "investigations", 120)
    seed_database(analytics, "events", 45)
    cache, sessions = redis_server(), redis_server()
    cache.client().mset({f"cache:{i}": i for i in range(30)})
    sessions.client(2).mset({f"session:{i}": "x" * i for i in range(12)})
    for var in ("DATABASE_URL", "REDIS_URL", "OFFSITE_STORAGE_URL", "BACKUP_AGE_RECIPIENTS", "CIDADAO_ENV"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BACKUP_SOURCES_FILE", write(tmp_path, SOURCES))
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    monkeypatch.setenv("MAIN_DATABASE_URL", main)
    monkeypatch.setenv("ANALYTICS_DATABASE_URL", analytics)
    monkeypatch.setenv("CACHE_REDIS_URL", cache.url())
    monkeypatch.setenv("SESSIONS_REDIS_URL", sessions.url())
    return {"root": tmp_path / "backups", "main": main, "analytics": analytics, "cache": cache, "sessions": sessions}


def run(defs, job, partition=None, op_config=None):
    run_config = {"ops": {op: {"config": config} for op, config in (op_config or {}).items()}}
    return defs.resolve_job_def(job).execute_in_process(
        run_config=run_config, partition_key=partition, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def failures(result) -> str:
    return "\n".join(e.event_specific_data.error.message for e in result.all_events if e.is_step_failure)


def test_each_source_gets_its_own_readable_definitions_pools_and_schedules(many):
    defs = build_defs()
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    for name in ("main", "analytics"):
        assert {f"{name}/postgres_daily_backup", f"{name}/postgres_weekly_offsite_backup"} <= keys
        assert f"{name}/postgres_restore_drill" in keys
        assert {f"{name}__restore_postgres", f"{name}__recover_rows", f"{name}__postgres_daily_backup_job"} <= {
            j.name for j in repo.get_all_jobs()
        }
    for name in ("cache", "sessions"):
        assert {f"{name}/redis_snapshot", f"{name}/redis_restore_drill"} <= keys
    assert "postgres_daily_backup" not in keys and "redis_snapshot" not in keys  # no implicit source on top
    assert {"investigations_json_export", "backup_health_report"} <= keys
    # One asset group per listed source: its graph shows that source's backups and drill side by side.
    groups = {k.to_user_string(): repo.asset_graph.get(k).group_name for k in repo.asset_graph.get_all_asset_keys()}
    assert groups["analytics/postgres_daily_backup"] == groups["analytics/postgres_restore_drill"] == "analytics"
    assert groups["sessions/redis_snapshot"] == "sessions" and groups["investigations_json_export"] == "exports"
    checks = {(k.asset_key.to_user_string(), k.name) for k in repo.asset_graph.asset_check_keys}
    assert {("analytics/postgres_daily_backup", "integrity"), ("sessions/redis_snapshot", "last_save")} <= checks

    pools = {
        key: next(iter(repo.assets_defs_by_key[dg.AssetKey(key.split("/"))].node_def.pools))
        for key in (
            "main/postgres_daily_backup",
            "analytics/postgres_daily_backup",
            "main/postgres_weekly_offsite_backup",
        )
        + ("cache/redis_snapshot", "sessions/redis_snapshot")
    }
    # Both databases live on one server: their dumps share one pool (limit 1 in dagster.yaml); the two Redis
    # servers are separate machines as far as the pools go.
    assert len({pools["main/postgres_daily_backup"], pools["analytics/postgres_daily_backup"]}) == 1
    assert (
        pools["main/postgres_daily_backup"]
        == pools["main/postgres_weekly_offsite_backup"]
        == "postgres_dump/127.0.0.1:5432"
    )
    assert pools["cache/redis_snapshot"] == f"redis_snapshot/127.0.0.1:{many['cache'].port}"
    assert pools["sessions/redis_snapshot"] == f"redis_snapshot/127.0.0.1:{many['sessions'].port}"

    schedules = {s.name: s for s in repo.schedule_defs}
    assert schedules["analytics__postgres_daily_backup_schedule"].cron_schedule == "30 1 * * *"
    assert schedules["main__postgres_daily_backup_schedule"].cron_schedule == "0 3 * * *"
    tick = datetime(2026, 11, 25, 1, 30, tzinfo=UTC)
    with dg.instance_for_test() as instance:  # the schedules look up earlier runs of the period
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick, repository_def=repo) as ctx:
            (request,) = schedules["analytics__postgres_daily_backup_schedule"].evaluate_tick(ctx).run_requests
        assert request.partition_key == DAY
        tick = datetime(2026, 11, 25, 13, 30, tzinfo=UTC)
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick, repository_def=repo) as ctx:
            (request,) = schedules["sessions__redis_snapshot_schedule"].evaluate_tick(ctx).run_requests
        assert request.partition_key == "2026-11-25-12:00"


def test_two_databases_and_two_redis_servers_are_backed_up_checked_and_restored_side_by_side(
    many, pg_admin_url, drop_later, redis_server
):
    defs = build_defs()
    root = many["root"]
    for job, partition, asset in [
        ("main__postgres_daily_backup_job", DAY, "main/postgres_daily_backup"),
        ("analytics__postgres_daily_backup_job", DAY, "analytics/postgres_daily_backup"),
        ("cache__redis_snapshot_job", HOUR, "cache/redis_snapshot"),
        ("sessions__redis_snapshot_job", HOUR, "sessions/redis_snapshot"),
    ]:
        result = run(defs, job, partition)
        assert result.success, failures(result)
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert {e.asset_key.to_user_string() for e in evaluations.values()} == {asset}
        assert evaluations["integrity"].passed and evaluations["freshness"].passed, asset

    # Each source in its own prefix of BACKUP_STORAGE_URL.
    assert newest_manifest_path(root / f"main/postgres/main/daily/{DAY}/").is_file()  # keyed by source name
    assert newest_manifest_path(root / f"analytics/postgres/analytics/daily/{DAY}/").is_file()
    assert newest_manifest_path(root / "cache/redis/cache/hourly/2026-11-24-1300/").is_file()
    assert newest_manifest_path(root / "sessions/redis/sessions/hourly/2026-11-24-1300/").is_file()
    assert not (root / "postgres").exists() and not (root / "redis").exists()

    # Restore each database from its own backups: the analytics restore holds analytics' data only.
    for name, table, rows in (("analytics", "events", 45), ("main", "investigations", 120)):
        target = unique_name(f"cbd_{name}_restored")
        drop_later.append(target)
        result = run(
            defs, f"{name}__restore_postgres", op_config={f"{name}__restore_postgres_op": {"target_database": target}}
        )
        assert result.success, failures(result)
        with psycopg.connect(url_with_dbname(pg_admin_url, target)) as conn:
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert tables == {table}
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == rows

    # Restore the sessions snapshot into a new, empty Redis: the sessions keys, none of the cache's.
    fresh = redis_server()
    result = run(defs, "sessions__restore_redis", op_config={"sessions__restore_redis_op": {"target_url": fresh.url()}})
    assert result.success, failures(result)
    assert fresh.client(2).dbsize() == 12 and fresh.client(0).dbsize() == 0
    assert fresh.client(2).get("session:3") == b"xxx"

    # The monthly drills prove one source without vouching for another.
    for job, asset in (
        ("analytics__postgres_restore_drill_job", "analytics/postgres_restore_drill"),
        ("sessions__redis_restore_drill_job", "sessions/redis_restore_drill"),
    ):
        result = run(defs, job, "2026-10-01")  # the last complete month
        assert result.success, failures(result)
        passed = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert passed["drill_passed"] and passed["drill_duration_within_rto"], asset
    health = run(defs, "backup_health_checks_job")
    verdicts = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in health.get_asset_check_evaluations()}
    for asset in ("main/postgres_daily_backup", "analytics/postgres_daily_backup", "cache/redis_snapshot"):
        assert verdicts[(asset, "freshness")], asset
    assert verdicts[("sessions/redis_snapshot", "freshness")]
    assert verdicts[("analytics/postgres_restore_drill", "recent_passing_drill")]
    assert verdicts[("sessions/redis_restore_drill", "recent_passing_drill")]
    assert not verdicts[("main/postgres_restore_drill", "recent_passing_drill")]  # never drilled
    assert not verdicts[("cache/redis_restore_drill", "recent_passing_drill")]

    # Retention and the health report see every source, each under its own class name.
    result = run(defs, "apply_retention")
    assert result.success, failures(result)
    (plan,) = [e for e in result.all_events if e.is_successful_output]
    table = plan.event_specific_data.metadata["plan"].value
    for class_name in (
        "main.postgres_daily",
        "analytics.postgres_daily",
        "cache.redis_hourly",
        "sessions.redis_hourly",
    ):
        assert f"| {class_name} |" in table
    report = run(defs, "backup_health_report_job")
    assert report.success, failures(report)
    (event,) = report.get_asset_materialization_events()
    markdown = event.materialization.metadata["report"].value
    assert "analytics.postgres_daily" in markdown and "sessions.redis_hourly" in markdown


def test_a_source_whose_variable_is_unset_fails_naming_that_variable(many, monkeypatch):
    monkeypatch.delenv("ANALYTICS_DATABASE_URL")
    defs = build_defs()  # the others still load and run
    result = run(defs, "analytics__postgres_daily_backup_job", DAY)
    assert not result.success
    assert "ANALYTICS_DATABASE_URL: is not set" in failures(result)
    assert run(defs, "main__postgres_daily_backup_job", DAY).success
