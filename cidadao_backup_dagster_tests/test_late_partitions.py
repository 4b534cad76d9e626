"""Issue 11, finding 2: a snapshot backup holds the data of the moment it runs, so an old partition label
would lie. Refused (nothing written) unless allowed on purpose, then recorded as late; a fast cron does not
re-run the same period; a new deployment's partitions start at BACKUP_PARTITIONS_START."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from cidadao_backup_dagster.core.artifacts.lateness import DEFAULT_GRACE_HOURS, check_late, parse_grace
from cidadao_backup_dagster.core.errors import RefusedError
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.demo import seed

from .conftest import newest_manifest_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(monkeypatch, tmp_path, make_database):
    url = make_database("cbd_late")
    seed(PgConnection.from_url(url), investigations=20)
    for var in ("OFFSITE_STORAGE_URL", "PG_BIN_DIR", "BACKUP_SOURCES_FILE", "BACKUP_PARTITIONS_START"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("BACKUP_LATE_GRACE_HOURS", raising=False)  # the real defaults
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    return {"tmp": tmp_path, "home": home, "url": url, "dbname": url.rsplit("/", 1)[1]}


def materialize(env, partition, *extra, start="2025-01-01"):
    cmd = [
        str(Path(sys.executable).with_name("dg")), "launch", "-m", "cidadao_backup_dagster.definitions",
        "--assets", "postgres_daily_backup", "--partition", partition, *extra,
    ]  # fmt: skip
    run_env = {**os.environ, "DAGSTER_HOME": str(env["home"]), "BACKUP_PARTITIONS_START": start}
    return subprocess.run(cmd, env=run_env, capture_output=True, text=True, cwd=env["tmp"])


def backup_keys(env):
    root = env["tmp"] / "backups" / "postgres"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_an_old_partition_is_refused_through_the_cli_and_nothing_is_written(env):
    out = materialize(env, "2025-06-01")
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Refusing to back up partition 2025-06-01" in text and "allow_late: true" in text
    assert backup_keys(env) == []
    # the refusal is audited as refused (decided by the error's type)
    records = [json.loads(p.read_text()) for p in (env["tmp"] / "backups" / "audit").rglob("*.json")]
    assert [(r["action"], r["result"]) for r in records] == [("backup", "refused")]


def test_an_old_partition_allowed_on_purpose_is_recorded_as_late(env):
    config = {"ops": {"postgres_daily_backup": {"config": {"allow_late": True}}}}
    out = materialize(env, "2025-06-01", "--config-json", json.dumps(config))
    assert out.returncode == 0, out.stderr[-3000:]
    folder = env["tmp"] / "backups" / "postgres" / "cidadao" / "daily" / "2025-06-01"
    manifest = json.loads(newest_manifest_path(folder).read_text())
    assert manifest["run"]["late"] is True and manifest["run"]["partition_end"].startswith("2025-06-02")
    snapshot_at = datetime.fromisoformat(manifest["timings"]["snapshot_at"].replace("Z", "+00:00"))
    assert datetime.now(UTC) - snapshot_at < timedelta(hours=1)  # the real snapshot time, not the label's


def test_yesterday_is_not_late_and_backs_up(env):
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    result = build_defs().resolve_job_def("postgres_daily_backup_job").execute_in_process(
        partition_key=yesterday, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    (mat,) = result.get_asset_materialization_events()
    assert mat.step_materialization_data.materialization.metadata["late"].value is False


def test_redis_and_weekly_csv_guards_refuse_old_partitions(env, monkeypatch):
    monkeypatch.setenv("BACKUP_LATE_GRACE_HOURS", "hourly=1,weekly=1")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    defs = build_defs()
    week = (datetime.now(UTC) - timedelta(days=30)).date()
    sunday = (week - timedelta(days=(week.weekday() + 1) % 7)).isoformat()
    csv = defs.resolve_job_def("agent_instances_csv_export_job").execute_in_process(
        partition_key=sunday, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not csv.success and "Refusing to back up partition" in str(csv.all_events)
    assert not list((env["tmp"] / "backups").rglob("*.csv.gz"))
    hour = (datetime.now(UTC) - timedelta(hours=5)).strftime("%Y-%m-%d-%H:00")
    redis = defs.resolve_job_def("redis_snapshot_job").execute_in_process(
        partition_key=hour, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not redis.success and "Refusing to back up partition" in str(redis.all_events)
    assert not (env["tmp"] / "backups" / "redis").exists()


def test_grace_rules_are_pure_and_configurable():
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    grace = parse_grace("")
    assert grace == DEFAULT_GRACE_HOURS == {"hourly": 6, "daily": 48, "weekly": 192}
    assert not check_late("2026-11-29", datetime(2026, 11, 30, tzinfo=UTC), cadence="daily", grace_hours=grace,
                          allow_late=False, what="x", now=now).late  # fmt: skip
    with pytest.raises(RefusedError, match="2025-06-01"):
        check_late("2025-06-01", datetime(2025, 6, 2, tzinfo=UTC), cadence="daily", grace_hours=grace,
                   allow_late=False, what="x", now=now)  # fmt: skip
    assert parse_grace("daily=12")["daily"] == 12
    with pytest.raises(ValueError, match="BACKUP_LATE_GRACE_HOURS"):
        parse_grace("monthly=3")


def test_new_deployment_partitions_start_at_the_configured_date():
    code = (
        "from cidadao_backup_dagster.defs.settings import Settings; p = Settings.from_environ().partitions;"
        "print(*(d.get_first_partition_key() for d in (p.daily, p.weekly, p.hourly)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "BACKUP_PARTITIONS_START"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2026-11-01", "2026-11-01", "2026-11-01-00:00"]
    env["BACKUP_PARTITIONS_START"] = "2026-11-11"  # a Wednesday: weekly partitions start the next Sunday
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2026-11-11", "2026-11-15", "2026-11-11-00:00"]


def test_a_cron_faster_than_the_partitions_does_not_rerun_the_same_period(env):
    """Seen: daily_schedule "* * * * *" under the daemon re-ran the same day every minute."""
    defs = build_defs()
    schedule = defs.resolve_schedule_def("postgres_daily_backup_schedule")
    repo = defs.get_repository_def()
    now = datetime.now(UTC)
    # Contexts as context managers: a schedule context enters the instance it is given and only its exit lets go.
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=now, repository_def=repo) as ctx:
            (first,) = schedule.evaluate_tick(ctx).run_requests
        partition = first.partition_key
        result = defs.resolve_job_def("postgres_daily_backup_job").execute_in_process(
            partition_key=partition, instance=instance,
            tags={"dagster/schedule_name": "postgres_daily_backup_schedule"},
        )  # fmt: skip
        assert result.success
        tick = now + timedelta(minutes=1)
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick, repository_def=repo) as ctx:
            later = schedule.evaluate_tick(ctx)
        assert not later.run_requests and f"Partition {partition} already has run" in later.skip_message


def test_restore_selection_goes_by_snapshot_time_never_by_label(tmp_path):
    from cidadao_backup_dagster.core.artifacts.manifest import Manifest, iso, write_manifest
    from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
    from cidadao_backup_dagster.core.postgres.restore import select_backup

    storage, series = LocalStorage(tmp_path), "postgres/cidadao/daily"

    def put(label, taken, late=False):
        key = f"{series}/{label}/obj-{taken:%H%M}"
        storage.put_bytes(key, b"x")
        data = {"partition": label, "artifact": {"key": key, "stored_bytes": 1},
                "timings": {"snapshot_at": iso(taken)}, "run": {"late": late}}  # fmt: skip
        return write_manifest(storage, series, Manifest(data))

    t = datetime(2026, 11, 30, tzinfo=UTC)
    nov20 = put("2026-11-20", datetime(2026, 11, 21, 3, tzinfo=UTC))
    nov29 = put("2026-11-29", t + timedelta(hours=3))
    late = put("2026-11-01", t + timedelta(hours=10), late=True)  # allowed late on purpose: today's data
    assert select_backup(storage, series, "latest") == late  # the newest data, whatever its label
    assert select_backup(storage, series, "before:2026-11-30T05:00Z") == nov29
    assert select_backup(storage, series, "before:2026-11-30T02:00-03:00") == nov29  # 05:00 UTC
    assert select_backup(storage, series, "before:2026-11-25T00:00Z") == nov20
    assert select_backup(storage, series, "2026-11-01") == late
    with pytest.raises(RefusedError, match="not a time"):
        select_backup(storage, series, "before:yesterday")
