"""The audit trail: every backup, verification, restore, row recovery and drill leaves one record with who
launched it and how it ended, including refusals and failures; no secret ever lands in one."""

import pytest

from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.protection.audit import read_audit
from cidadao_backup_dagster.demo import seed

from .conftest import unique_name
from .test_recovery import run

PASSWORD = "audit-Pa55-word"


@pytest.fixture
def env(monkeypatch, tmp_path, make_database):
    for var in ("OFFSITE_STORAGE_URL", "BACKUP_AGE_RECIPIENTS", "BACKUP_AGE_IDENTITY_FILE", "CIDADAO_ENV"):
        monkeypatch.delenv(var, raising=False)
    url = make_database("cbd_audit")
    seed(PgConnection.from_url(url), investigations=120)
    monkeypatch.setenv("DATABASE_URL", url.replace("postgres@", f"postgres:{PASSWORD}@"))
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/b")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return LocalStorage(tmp_path / "b")


def test_every_operation_leaves_one_record(env, drop_later):
    assert run("postgres_daily_backup_job", partition="2026-11-24").success
    target = unique_name("cbd_audited")
    drop_later.append(target)
    assert run("restore_postgres", {"target_database": target}).success
    assert not run("restore_postgres", {"target_database": target}).success  # refused: it holds data now
    assert run("recover_rows", {"where": "status = 'failed'"}).success
    assert run("postgres_restore_drill_job", partition="2026-10-01").success
    records = read_audit(env)
    summary = [(r["action"], r["result"]) for r in records]
    assert summary == [
        ("backup", "ok"),
        ("verify", "ok"),
        ("restore", "ok"),
        ("restore", "refused"),
        ("recover_rows", "dry_run"),
        ("drill", "ok"),
    ], summary
    assert all(r["run_id"] and r["launched_by"] == "manual" and r["at"] for r in records)
    assert records[0]["artifact"].endswith(".dump.zst") and records[2]["artifact"].endswith(f"/{target}")
    assert "Refusing" in records[3]["details"]["error"]
    text = "".join(str(r) for r in records)
    assert PASSWORD not in text


def test_a_failed_backup_is_audited_as_failed(env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:" + PASSWORD + "@127.0.0.1:5432/no_such_db_here")
    assert not run("postgres_daily_backup_job", partition="2026-11-24").success
    (record,) = read_audit(env)
    assert (record["action"], record["result"]) == ("backup", "failed")
    assert "no_such_db_here" in record["details"]["error"] and PASSWORD not in str(record)
