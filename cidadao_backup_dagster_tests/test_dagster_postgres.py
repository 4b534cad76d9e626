"""The Dagster layer, end to end: definitions load, the backup job runs with its checks on local and S3
storage, checks fire on crafted faults, schedules pick the right partitions, secrets stay out of events."""

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from cidadao_backup_dagster.core.artifacts.manifest import Manifest, iso, write_manifest
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.defs.postgres import daily_checks
from cidadao_backup_dagster.defs.sources import PG_DUMP_POOL
from cidadao_backup_dagster.demo import seed

from .conftest import manifest_paths, newest_manifest_path

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "s3cr3t-Pa55word"  # trust auth ignores it, so it rides along in every URL and must never leak


@pytest.fixture
def source_url(make_database):
    """A small Cidadão-shaped database, addressed with a password in the URL."""
    url = make_database("cbd_dg")
    seed(PgConnection.from_url(url), investigations=300)
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


@pytest.fixture
def env(monkeypatch, tmp_path, source_url):
    """Environment for one run: the test database, a local storage folder, no expected-size range."""
    for var in ("BACKUP_STORAGE_URL", "OFFSITE_STORAGE_URL", "BACKUP_ZSTD_LEVEL", "PG_BIN_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", source_url)
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return tmp_path


def run_job(name, partition=None, instance=None):
    defs = build_defs()
    return defs.resolve_job_def(name).execute_in_process(
        partition_key=partition, instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def checks_by_name(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def all_event_text(result) -> str:
    return "\n".join(repr(e) for e in result.all_events)


def daily_dir(tmp_path, source_url, partition):
    return tmp_path / "backups" / "postgres" / "cidadao" / "daily" / partition  # the source's name, not dbname


def test_definitions_load_with_expected_shape(env):
    defs = build_defs()
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"postgres_daily_backup", "postgres_weekly_offsite_backup"} <= keys
    check_names = {(k.asset_key.to_user_string(), k.name) for k in repo.asset_graph.asset_check_keys}
    for asset in ("postgres_daily_backup", "postgres_weekly_offsite_backup"):
        assert {(asset, "integrity"), (asset, "size_deviation"), (asset, "freshness")} <= check_names
    for asset in ("postgres_daily_backup", "postgres_weekly_offsite_backup"):
        node = repo.assets_defs_by_key[dg.AssetKey(asset)]
        assert node.specs_by_key[dg.AssetKey(asset)].kinds >= {"postgres"}
        assert node.op.pool == PG_DUMP_POOL
    assert {s.name for s in repo.schedule_defs} >= {
        "postgres_daily_backup_schedule",
        "postgres_weekly_offsite_backup_schedule",
        "backup_health_checks_schedule",
    }


def test_daily_backup_to_local_storage_runs_checks_and_keeps_password_out(env, source_url):
    result = run_job("postgres_daily_backup_job", "2026-11-24")
    assert result.success
    checks = checks_by_name(result)
    assert checks["integrity"].passed and checks["freshness"].passed and checks["size_deviation"].passed
    (mat,) = result.get_asset_materialization_events()
    meta = mat.step_materialization_data.materialization.metadata
    assert meta["rows"].value == 316 and meta["tables"].value == 2
    assert meta["stored_bytes"].value > 0 and meta["raw_bytes"].value > meta["stored_bytes"].value
    folder = daily_dir(env, source_url, "2026-11-24")
    manifest = json.loads(newest_manifest_path(folder).read_text())
    assert manifest["contents"]["tables"] == {"public.agent_instances": 16, "public.investigations": 300}
    assert PASSWORD not in newest_manifest_path(folder).read_text()
    assert PASSWORD not in all_event_text(result)


def test_daily_backup_to_s3(env, aws_env, make_bucket, monkeypatch, s3_client):
    bucket = make_bucket()
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/cidadao")
    result = run_job("postgres_daily_backup_job", "2026-11-23")
    assert result.success
    # (storage_lifecycle warns: a fresh bucket has no lifecycle rule yet; test_protection_s3 covers it)
    assert all(e.passed for e in result.get_asset_check_evaluations() if not e.check_name.startswith("storage_"))
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(re.search(r"/daily/2026-11-23/manifest-[^/]+\.json$", k) for k in keys)
    assert any(k.endswith(".dump.zst") for k in keys)


def test_rerun_of_a_partition_keeps_both_backups_and_the_newest_is_current(env, source_url):
    assert run_job("postgres_daily_backup_job", "2026-11-24").success
    assert run_job("postgres_daily_backup_job", "2026-11-24").success
    folder = daily_dir(env, source_url, "2026-11-24")
    manifests = manifest_paths(folder)
    dumps = sorted(p.name for p in folder.iterdir() if p.name.endswith(".dump.zst"))
    assert len(manifests) == 2 and len(dumps) == 2  # nothing stored is overwritten or deleted by a re-run
    assert json.loads(manifests[-1].read_text())["artifact"]["key"].endswith(dumps[-1])


def run_checks(partition, *check_names):
    defs = build_defs()
    checks = [c for c in daily_checks() if any(k.name in check_names for k in c.check_keys)]
    job = dg.define_asset_job("only_checks", selection=dg.AssetSelection.checks(*checks))
    resolved = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("only_checks")
    # A checks-only selection has no assets to infer partitions from: pass the partition as the run tag,
    # which is what the UI does when it launches a check for one partition.
    return resolved.execute_in_process(
        tags={"dagster/partition": partition}, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
def test_integrity_check_fails_on_damaged_object(env, source_url, damage):
    assert run_job("postgres_daily_backup_job", "2026-11-24").success
    (dump,) = daily_dir(env, source_url, "2026-11-24").glob("*.dump.zst")
    data = bytearray(dump.read_bytes())
    if damage == "bitflip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    dump.write_bytes(bytes(data))
    evaluation = checks_by_name(run_checks("2026-11-24", "integrity"))["integrity"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "SHA-256" in evaluation.description or "size" in evaluation.description


def test_integrity_check_fails_when_partition_has_no_backup(env):
    evaluation = checks_by_name(run_checks("2026-01-02", "integrity"))["integrity"]
    assert not evaluation.passed and "No manifest" in evaluation.description


def _fake_backup(storage, series, partition, size, snapshot_at):
    """A crafted history entry: a real object of `size` bytes and its manifest."""
    key = f"{series}/{partition}/fake_{partition}.dump.zst"
    storage.put_bytes(key, b"x" * size)
    write_manifest(
        storage,
        series,
        Manifest(
            {
                "partition": partition,
                "artifact": {
                    "key": key,
                    "stored_bytes": size,
                    "stored_sha256": "",
                    "raw_bytes": size,
                    "raw_sha256": "",
                },
                "timings": {"snapshot_at": iso(snapshot_at)},
            }
        ),
    )


def test_size_check_warns_on_deviation_from_crafted_history(env, source_url):
    assert run_job("postgres_daily_backup_job", "2026-11-24").success
    storage = LocalStorage(env / "backups")
    series = f"postgres/{PgConnection.from_url(source_url).dbname}/daily"
    actual = json.loads(newest_manifest_path(daily_dir(env, source_url, "2026-11-24")).read_text())
    size = actual["artifact"]["stored_bytes"]
    now = datetime.now(UTC)
    for day in range(10, 17):  # seven earlier backups, each ~3x larger than today's
        _fake_backup(storage, series, f"2026-11-{day:02d}", size * 3, now - timedelta(days=24 - day))
    evaluation = checks_by_name(run_checks("2026-11-24", "size_deviation"))["size_deviation"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "median" in evaluation.description


def test_freshness_ignores_a_backfilled_old_partition(env, source_url):
    storage = LocalStorage(env / "backups")
    series = f"postgres/{PgConnection.from_url(source_url).dbname}/daily"
    now = datetime.now(UTC)
    _fake_backup(storage, series, "2026-11-20", 1000, now - timedelta(days=3))  # newest partition, stale
    _fake_backup(storage, series, "2026-10-01", 1000, now)  # a backfill made just now
    result = run_job("backup_health_checks_job")
    assert result.success
    evaluation = checks_by_name(result)
    fresh = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path == ["postgres_daily_backup"] and e.check_name == "freshness"
    ]
    assert len(fresh) == 1 and not fresh[0].passed
    assert fresh[0].severity == dg.AssetCheckSeverity.ERROR and "2026-11-20" in fresh[0].description
    assert evaluation  # the weekly freshness check ran too (and fails: no OFFSITE_STORAGE_URL)


def test_bad_storage_url_fails_fast_naming_the_variable(env, monkeypatch):
    monkeypatch.setenv("BACKUP_STORAGE_URL", "ftp://somewhere/backups")
    result = run_job("postgres_daily_backup_job", "2026-11-24")
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures and "BACKUP_STORAGE_URL" in failures[0].event_specific_data.error.message
    assert len(failures) == 1  # a configuration error is not retried


def test_weekly_offsite_without_offsite_url_names_it(env):
    result = run_job("postgres_weekly_offsite_backup_job", "2026-11-15")
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).event_specific_data.error.message
    assert "OFFSITE_STORAGE_URL" in message


def test_weekly_offsite_backup_lands_in_offsite_storage(env, monkeypatch, source_url):
    monkeypatch.setenv("OFFSITE_STORAGE_URL", f"file://{env}/offsite")
    result = run_job("postgres_weekly_offsite_backup_job", "2026-11-15")
    assert result.success, all_event_text(result)
    assert manifest_paths(env / "offsite" / "postgres" / "cidadao" / "weekly" / "2026-11-15")


@pytest.mark.parametrize(
    "schedule_name, tick, partition",
    [
        ("postgres_daily_backup_schedule", datetime(2026, 11, 25, 3, 0, tzinfo=UTC), "2026-11-24"),
        ("postgres_daily_backup_schedule", datetime(2027, 1, 1, 3, 0, tzinfo=UTC), "2026-12-31"),
        # Sunday 2026-11-29 02:00 UTC backs up the Sunday-to-Saturday week that began 2026-11-22.
        ("postgres_weekly_offsite_backup_schedule", datetime(2026, 11, 29, 2, 0, tzinfo=UTC), "2026-11-22"),
    ],
)
def test_schedules_pick_the_period_that_just_ended(env, schedule_name, tick, partition):
    defs = build_defs()
    schedule = defs.resolve_schedule_def(schedule_name)
    assert schedule.execution_timezone == "UTC"
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance=instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def()
        ) as context,
    ):
        data = schedule.evaluate_tick(context)
    (request,) = data.run_requests
    assert request.partition_key == partition
    cron = {"postgres_daily_backup_schedule": "0 3 * * *", "postgres_weekly_offsite_backup_schedule": "0 2 * * 0"}
    assert schedule.cron_schedule == cron[schedule_name]


def test_production_instance_yaml_uses_postgres_storage_and_one_dump_at_a_time(make_database, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    code = (
        "import dagster as dg; i = dg.DagsterInstance.get(); c = i.get_concurrency_config(); "
        "print(type(i.run_storage).__name__, type(i.event_log_storage).__name__, "
        "type(i.schedule_storage).__name__, c.pool_config.default_pool_limit, c.pool_config.pool_granularity.value)"
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": make_database("cbd_instance")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        "PostgresRunStorage",
        "PostgresEventLogStorage",
        "PostgresScheduleStorage",
        "1",
        "run",
    ]


def test_cli_materialize_one_partition(env, tmp_path):
    """The README's `dg launch --assets ... --partition` path, through the real CLI."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    cmd = [
        str(Path(sys.executable).with_name("dg")), "launch", "-m", "cidadao_backup_dagster.definitions",
        "--assets", "postgres_daily_backup", "--partition", "2026-11-22",
    ]  # fmt: skip
    out = subprocess.run(
        cmd, env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RUN_SUCCESS" in out.stderr + out.stdout
    assert PASSWORD not in out.stderr + out.stdout


def test_quickstart_backs_up_the_demo_database(make_database, tmp_path, monkeypatch):
    from cidadao_backup_dagster import quickstart

    url = make_database("cbd_quick")
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/qs")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    monkeypatch.setenv("DATABASE_URL", "")  # the quick start sets it; monkeypatch restores it afterwards
    assert quickstart.main(["--database-url", url, "--partition", "2026-11-24"]) == 0
    assert list((tmp_path / "qs").rglob("manifest-*.json"))
