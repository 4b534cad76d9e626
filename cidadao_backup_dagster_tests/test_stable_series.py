"""Issue 11, finding 6: PostgreSQL series are keyed by the source's stable name, not the database name in the
URL. A series written before the upgrade (keyed by database name, one `manifest.json` per partition) is still
found by restores, checks and retention; renaming the database keeps one series; two sources that would read
each other's old series are refused when the code location loads."""

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from cidadao_backup_dagster.core.artifacts.layout import MANIFEST_NAME, Series
from cidadao_backup_dagster.core.artifacts.manifest import valid_manifests
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.errors import ConfigurationError
from cidadao_backup_dagster.core.postgres.backup import backup_postgres
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.definitions import build_defs

from .conftest import drop_database, unique_name, url_with_dbname


def run(job, partition=None, config=None, op=None, instance=None):
    run_config = {"ops": {op: {"config": config}}} if op else None
    return build_defs().resolve_job_def(job).execute_in_process(
        partition_key=partition, run_config=run_config, instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )  # fmt: skip


def old_layout_backup(storage, url, partition):
    """A backup as the previous release stored it: `postgres/<database>/daily/<partition>/manifest.json`."""
    dbname = PgConnection.from_url(url).dbname
    legacy = f"postgres/{dbname}/daily"
    manifest = backup_postgres(PgConnection.from_url(url), storage, series=legacy, partition=partition)
    storage.put_bytes(f"{legacy}/{partition}/{MANIFEST_NAME}", manifest.to_json())
    storage.delete(manifest.key)  # only the old single manifest.json stays, as the old release left it
    return legacy


@pytest.fixture
def env(monkeypatch, tmp_path, make_database):
    for var in ("OFFSITE_STORAGE_URL", "BACKUP_SOURCES_FILE", "POSTGRES_SOURCE_NAME", "DRILL_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    url = make_database("cbd_series")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 40)")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return {"url": url, "storage": LocalStorage(tmp_path / "backups"), "tmp": tmp_path}


def test_a_series_from_before_the_upgrade_is_still_restored_checked_and_kept(env, drop_later):
    legacy = old_layout_backup(env["storage"], env["url"], "2026-11-22")
    assert run("postgres_daily_backup_job", "2026-11-23").success  # the first backup after the upgrade
    new = "postgres/cidadao/daily"
    assert [m.partition for m in valid_manifests(env["storage"], new)] == ["2026-11-23"]
    both = Series(new, (legacy,))
    assert [m.partition for m in valid_manifests(env["storage"], both)] == ["2026-11-22", "2026-11-23"]

    target = unique_name("cbd_series_restored")
    drop_later.append(target)
    restored = run("restore_postgres", config={"backup": "2026-11-22", "target_database": target},
                   op="restore_postgres_op")  # fmt: skip
    assert restored.success  # restore by date finds the partition of the old layout
    with psycopg.connect(url_with_dbname(env["url"], target)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 40

    # retention sees the old series too: its plan (in the run log) keeps the old partition by name
    instance = dg.DagsterInstance.ephemeral()
    dry = run("apply_retention", config={"dry_run": True}, op="apply_retention_op", instance=instance)
    assert dry.success
    assert any("keep   2026-11-22 (manifest.json)" in e.user_message for e in instance.all_logs(dry.run_id))


def test_renaming_the_database_keeps_one_series(env, pg_admin_url, monkeypatch):
    assert run("postgres_daily_backup_job", "2026-11-23").success
    old = PgConnection.from_url(env["url"]).dbname
    renamed = f"{old}_renamed"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(renamed)))
    try:
        monkeypatch.setenv("DATABASE_URL", url_with_dbname(env["url"], renamed))
        assert run("postgres_daily_backup_job", "2026-11-24").success
        series = "postgres/cidadao/daily"
        manifests = valid_manifests(env["storage"], series)
        assert [m.partition for m in manifests] == ["2026-11-23", "2026-11-24"]
        assert [m.data["source"]["database"] for m in manifests] == [old, renamed]
        freshness = run("postgres_daily_backup_job", "2026-11-24")
        assert all(e.passed for e in freshness.get_asset_check_evaluations() if e.check_name == "freshness")
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(renamed), sql.Identifier(old)))
        drop_database(pg_admin_url, renamed)


def test_two_sources_sharing_a_prefix_and_a_database_name_are_refused_at_load(tmp_path, monkeypatch):
    (tmp_path / "sources.yaml").write_text(
        "postgres:\n"
        "  - {name: one, url_env: ONE_URL, storage_prefix: shared}\n"
        "  - {name: two, url_env: TWO_URL, storage_prefix: shared}\n"
    )
    monkeypatch.setenv("BACKUP_SOURCES_FILE", str(tmp_path / "sources.yaml"))
    monkeypatch.setenv("ONE_URL", "postgresql://postgres@db-one.example:5432/postgres")
    monkeypatch.setenv("TWO_URL", "postgresql://postgres@db-two.example:5432/postgres")
    with pytest.raises(ConfigurationError, match="'one' and 'two' both back up a database named 'postgres'"):
        build_defs()
    monkeypatch.setenv("TWO_URL", "postgresql://postgres@db-two.example:5432/analytics")
    assert build_defs()  # different databases under one prefix are fine


def test_an_on_demand_backup_has_its_own_series_verified_in_the_same_run(env):
    """Issue 11 (late partitions): "before I run this migration" gets its own job and series, not a daily label."""
    instance = dg.DagsterInstance.ephemeral()
    result = run("postgres_on_demand_backup", config={"reason": "before migration 0042"},
                 op="postgres_on_demand_backup_op", instance=instance)  # fmt: skip
    assert result.success
    (manifest,) = valid_manifests(env["storage"], "postgres/cidadao/on_demand")
    assert manifest.data["run"]["reason"] == "before migration 0042" and manifest.tables == {"public.t": 40}
    assert not list((env["tmp"] / "backups" / "postgres" / "cidadao").glob("daily"))  # no daily label was used
    assert any("On-demand backup verified" in e.user_message for e in instance.all_logs(result.run_id))
