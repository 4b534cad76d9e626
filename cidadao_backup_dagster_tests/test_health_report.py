"""The backup health report: rows computed from a crafted local-storage history (core, no Dagster), the
asset rendering them with the instance's check results, and its refresh after a real backup."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from cidadao_backup_dagster.core.artifacts.manifest import Manifest, iso, write_manifest
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.monitoring.report import (
    class_health,
    default_targets,
    numeric_metadata,
    render_markdown,
)
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.defs.postgres import daily_checks

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DB = "cbd_report_db"
PG = f"postgres/{DB}/daily"
REDIS = "redis/cache/hourly"


def put(storage, series, partition, taken_at, size, *, asset=None, dagster_partition=None):
    key = f"{series}/{partition}/obj_{partition}.zst"
    storage.put_bytes(key, b"x" * size)
    data = {
        "partition": partition,
        "artifact": {"key": key, "uri": storage.uri(key), "stored_bytes": size, "stored_sha256": "0" * 64},
        "timings": {"snapshot_at": iso(taken_at)},
    }
    if asset:
        data["run"] = {"asset": asset, "dagster_run_id": "r"}
    if dagster_partition:
        data["dagster_partition"] = dagster_partition
    write_manifest(storage, series, Manifest(data))
    return key


def drill(storage, kind, source, month, backup_key, *, passed=True, seconds=42.0, rto=1800):
    report = {
        "partition": month,
        "backup_partition": backup_key.split("/")[-2],
        "backup_uri": storage.uri(backup_key),
        "passed": passed,
        "problems": [] if passed else ["row count mismatch"],
        "duration_seconds": seconds,
        "rto_seconds": rto,
        "finished_at": iso(datetime.strptime(month, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(hours=5)),
    }
    storage.put_bytes(f"drills/{kind}/{source}/{month}/report.json", json.dumps(report).encode())


def history(storage, now, *, newest_size=1000, newest_age_h=9):
    """Eight daily backups of ~1000 bytes (the newest `newest_size`), a passing drill of one of them, and
    three hourly Redis snapshots."""
    keys = []
    for n in range(8, 0, -1):
        day = (now - timedelta(days=n)).strftime("%Y-%m-%d")
        size = newest_size if n == 1 else 1000 + 10 * n
        age = timedelta(hours=newest_age_h) if n == 1 else timedelta(days=n - 1, hours=newest_age_h)
        keys.append(put(storage, PG, day, now - age, size, asset="postgres_daily_backup"))
    drill(storage, "postgres", DB, "2026-11-01", keys[2])
    for h in (3, 2, 1):
        stamp = now - timedelta(hours=h)
        put(storage, REDIS, stamp.strftime("%Y-%m-%d-%H00"), stamp + timedelta(minutes=5), 500,
            asset="redis_snapshot", dagster_partition=stamp.strftime("%Y-%m-%d-%H:00"))  # fmt: skip
    return keys


def test_rows_from_a_crafted_history(tmp_path):
    storage = LocalStorage(tmp_path / "b")
    history(storage, NOW, newest_size=2500)
    pg = class_health("postgres_daily", storage, PG, now=NOW)
    assert pg.status == "warning" and pg.asset == "postgres_daily_backup"
    assert pg.newest_partition == "2026-11-24" and pg.age_hours == 9.0
    assert pg.stored_bytes == 2500 and pg.median_bytes == 1050 and pg.size_change_pct == pytest.approx(138.1)
    assert pg.drill["passed"] and pg.drill["duration_s"] == 42.0 and pg.drill["rto_s"] == 1800
    assert any("size +138%" in p for p in pg.problems)
    redis = class_health("redis_hourly", storage, REDIS, now=NOW)
    assert redis.newest_partition == "2026-11-25-11:00" and redis.age_hours == pytest.approx(0.92)
    assert redis.status == "high" and "never restored" in redis.problems[0]  # no Redis drill report yet

    stale = class_health("postgres_daily", storage, PG, now=NOW + timedelta(days=2))
    assert stale.status == "critical" and "over the 48 h limit" in stale.problems[0]
    empty = class_health("postgres_weekly", storage, f"postgres/{DB}/weekly", now=NOW)
    assert empty.status == "critical" and empty.problems == ["no valid artifact"]

    text = render_markdown([pg, redis, stale, empty], NOW)
    assert "| 🟡 | **postgres_daily** | `2026-11-24` | 9 h / RPO 24 h (alert 48 h) |" in text
    assert "✅ 2026-11-01: 42 s / RTO 30 min (2%)" in text
    assert "2.5 KB vs median 1.1 KB (+138%)" in text
    meta = numeric_metadata([pg, redis])
    assert meta["postgres_daily_age_hours"] == 9.0 and meta["postgres_daily_stored_bytes"] == 2500
    assert meta["postgres_daily_drill_duration_s"] == 42.0 and meta["redis_hourly_age_hours"] == pytest.approx(0.92)


def test_a_failed_or_slow_drill_and_checks_show_in_the_row(tmp_path):
    storage = LocalStorage(tmp_path / "b")
    keys = history(storage, NOW)
    drill(storage, "postgres", DB, "2026-10-01", keys[0], seconds=10)
    drill(storage, "postgres", DB, "2026-11-01", keys[1], seconds=2400)  # newest: over the 30 min RTO
    from cidadao_backup_dagster.core.monitoring.report import CheckStatus

    checks = [CheckStatus("integrity", True, "ERROR"), CheckStatus("size_deviation", False, "WARN", "2026-11-24")]
    row = class_health("postgres_daily", storage, PG, now=NOW, checks_for=lambda asset: checks)
    assert row.status == "high" and row.drill["partition"] == "2026-11-01"
    assert "over the 1800 s RTO" in " ".join(row.problems)
    text = render_markdown([row], NOW)
    assert "🟡 size_deviation [2026-11-24]; 1 passed" in text and "40 min / RTO 30 min (133%)" in text
    assert default_targets("exports/db/investigations/daily").rpo_hours == 7 * 24


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("OFFSITE_STORAGE_URL", "REDIS_URL", "ALERT_WEBHOOK_URL", "SLACK_BOT_TOKEN", "SLACK_CHANNEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:rep0rt-secret@127.0.0.1:5432/{DB}")
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return LocalStorage(tmp_path / "backups")


def test_report_asset_renders_rows_with_check_status_and_skips_unconfigured(env):
    now = datetime.now(UTC)
    history(env, now)
    defs = build_defs()
    checks = [c for c in daily_checks() if any(k.name == "freshness" for k in c.check_keys)]
    job = dg.define_asset_job("report_test_checks", selection=dg.AssetSelection.checks(*checks))
    with dg.instance_for_test() as instance:
        dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("report_test_checks").execute_in_process(
            instance=instance
        )
        result = defs.resolve_job_def("backup_health_report_job").execute_in_process(instance=instance)
    assert result.success
    (mat,) = result.get_asset_materialization_events()
    meta = mat.step_materialization_data.materialization.metadata
    text = meta["report"].value
    assert "**postgres_daily**" in text and "**redis_hourly**" in text and "**postgres_weekly**" in text
    assert "✅ 1 passed" in text  # the freshness check's latest result, read from the instance
    assert "OFFSITE_STORAGE_URL" in text  # the weekly class is skipped, saying why
    assert "rep0rt-secret" not in text
    assert meta["postgres_daily_age_hours"].value == pytest.approx(9.0, abs=0.1)
    assert meta["postgres_daily_stored_bytes"].value == 1000
    assert "**exports_investigations**" in text and "**exports_agent_instances**" in text
    assert "**postgres_on_demand**" in text and "none stored (made on demand only)" in text  # no finding
    assert meta["classes_skipped"].value == 1 and meta["classes"].value == 6


def test_report_refreshes_after_a_real_backup_and_daily(env, make_database, monkeypatch):
    url = make_database("cbd_report")
    monkeypatch.setenv("DATABASE_URL", url)
    defs = build_defs()
    sensor = defs.resolve_sensor_def("backup_health_report_sensor")
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, definitions=defs) as ctx:
            assert not sensor.evaluate_tick(ctx).run_requests  # nothing materialized yet
        backup = defs.resolve_job_def("postgres_daily_backup_job").execute_in_process(
            partition_key="2026-11-24", instance=instance
        )
        assert backup.success
        with dg.build_sensor_context(instance=instance, definitions=defs) as ctx:
            first = sensor.evaluate_tick(ctx)
        (request,) = first.run_requests
        assert "postgres_daily_backup" in request.tags["cidadao/trigger"]
        with dg.build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor) as ctx:
            assert not sensor.evaluate_tick(ctx).run_requests  # one refresh per batch of backups
    schedule = defs.resolve_schedule_def("backup_health_report_schedule")
    assert schedule.cron_schedule == "15 6 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
