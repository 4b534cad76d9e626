"""The exports' Dagster layer, end to end: definitions, scheduled runs that land and read back in pandas,
ranged (backfill) runs with one result per partition, checks firing on crafted faults (row missing, column
dropped, stale export, size), bad settings failing at launch, and no password anywhere."""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import psycopg
import pytest

from cidadao_backup_dagster.core.artifacts.manifest import Manifest, iso, write_manifest
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.definitions import HEALTH_CHECKS_JOB, build_defs
from cidadao_backup_dagster.defs import exports
from cidadao_backup_dagster.defs.settings import Settings
from cidadao_backup_dagster.defs.sources import PgBinding
from cidadao_backup_dagster.demo import SCHEMA, seed

from .conftest import newest_manifest_path

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "exp0rt-Dagster-Pa55"
COLUMNS = ["id", "query", "status", "results", "metadata", "created_at"]
CHECKS = {"integrity", "row_count", "schema_drift", "size_deviation", "encrypted", "freshness"}
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture
def source_url(make_database):
    """Investigations every 36 minutes from 2026-11-18 to 2026-11-24 (UTC) and the 16 demo agents; the URL
    carries a password (trust auth ignores it) that must never show up anywhere."""
    url = make_database("cbd_exd")
    with psycopg.connect(url) as conn:
        conn.execute(SCHEMA)
        conn.execute(
            """INSERT INTO investigations (user_id, query, status, results, metadata, created_at)
               SELECT 'u' || g, 'Consulta "' || g || E'" — ação\\nlinha 2', 'completed',
                      jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g % 3)),
                      jsonb_build_object('agent', 'Zumbi'),
                      timestamptz '2026-11-18 00:00:00+00' + g * interval '36 minutes'
               FROM generate_series(0, 7 * 24 * 60 / 36 - 1) AS g"""
        )
    seed(PgConnection.from_url(url))  # investigations exist already: adds only the agents
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


@pytest.fixture
def env(monkeypatch, tmp_path, source_url):
    for var in (
        "BACKUP_STORAGE_URL", "INVESTIGATIONS_EXPORT_TABLE", "INVESTIGATIONS_EXPORT_COLUMNS",
        "INVESTIGATIONS_EXPORT_TIME_COLUMN", "AGENT_INSTANCES_EXPORT_TABLE", "AGENT_INSTANCES_EXPORT_COLUMNS",
        "EXPORT_GZIP_LEVEL", "BACKUP_AGE_RECIPIENTS", "BACKUP_AGE_IDENTITY_FILE", "CIDADAO_ENV",
    ):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", source_url)
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    return tmp_path


def dbname(source_url) -> str:
    return PgConnection.from_url(source_url).dbname


def series(source_url, table="investigations", cadence="daily") -> str:
    return f"exports/{dbname(source_url)}/{table}/{cadence}"


def run_job(name, *, partition=None, tags=None):
    return (
        build_defs()
        .resolve_job_def(name)
        .execute_in_process(
            partition_key=partition, tags=tags, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
        )
    )


def export_domain():
    """The exports' definitions as build_defs() builds them from the environment now."""
    settings = Settings.from_environ()
    return exports.build(PgBinding.of(settings.sources.export_source, settings))


def investigations_checks():
    key = dg.AssetKey("investigations_json_export")
    return [c for c in export_domain().defs.asset_checks if all(k.asset_key == key for k in c.check_keys)]


def run_checks(checks_defs, partition, *names):
    """Only the named checks, for one partition (the run tag the UI sets when it launches a check)."""
    chosen = [c for c in checks_defs if any(k.name in names for k in c.check_keys)]
    job = dg.define_asset_job("only_export_checks", selection=dg.AssetSelection.checks(*chosen))
    resolved = dg.Definitions.merge(build_defs(), dg.Definitions(jobs=[job])).resolve_job_def("only_export_checks")
    tags = {"dagster/partition": partition} if partition else None
    return resolved.execute_in_process(tags=tags, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def evaluations(result, asset="investigations_json_export"):
    return [e for e in result.get_asset_check_evaluations() if e.asset_key.path == [asset]]


def by_name(result, asset="investigations_json_export"):
    return {e.check_name: e for e in evaluations(result, asset)}


def all_event_text(result) -> str:
    return "\n".join(repr(e) for e in result.all_events)


def failure_messages(result) -> list[str]:
    return [e.event_specific_data.error.message for e in result.all_events if e.is_step_failure]


def stored(env, key: str) -> bytes:
    return (env / "backups" / key).read_bytes()


def manifest_of(env, source_url, partition, table="investigations", cadence="daily") -> Manifest:
    folder = env / "backups" / series(source_url, table, cadence) / partition
    return Manifest(json.loads(newest_manifest_path(folder).read_text()))


# -------------------------------------------------------------------------------------------- shape


def test_export_definitions_shape(env):
    repo = build_defs().get_repository_def()
    checks = {(k.asset_key.to_user_string(), k.name) for k in repo.asset_graph.asset_check_keys}
    for asset, kind in (("investigations_json_export", "json"), ("agent_instances_csv_export", "csv")):
        node = repo.assets_defs_by_key[dg.AssetKey(asset)]
        assert {(asset, name) for name in CHECKS} <= checks
        assert node.specs_by_key[dg.AssetKey(asset)].kinds == {"postgres", kind}
        assert node.op.pool == asset  # one run of an export at a time
        assert node.backfill_policy == dg.BackfillPolicy.single_run()  # a backfilled range is one run
        assert node.required_resource_keys >= {"postgres_source", "backup_storage", "export_policy"}
    integrity = next(c for c in investigations_checks() if any(k.name == "integrity" for k in c.check_keys))
    assert integrity.check_specs_by_output_name and all(s.blocking for s in integrity.check_specs)
    schedules = {s.name: s for s in repo.schedule_defs}
    for name in ("investigations_json_export_schedule", "agent_instances_csv_export_schedule"):
        assert schedules[name].default_status == dg.DefaultScheduleStatus.RUNNING
        assert schedules[name].execution_timezone == "UTC"
    # The hourly health-check job judges the exports' freshness too.
    selected = repo.get_job(HEALTH_CHECKS_JOB).asset_layer.asset_graph.asset_check_keys
    assert {(k.asset_key.to_user_string(), k.name) for k in selected} >= {
        ("investigations_json_export", "freshness"),
        ("agent_instances_csv_export", "freshness"),
    }


# ---------------------------------------------------------------------------------------------- runs


def test_daily_export_lands_opens_in_pandas_identical_and_passes_its_checks(env, source_url):
    result = run_job("investigations_json_export_job", partition="2026-11-24")
    assert result.success, failure_messages(result)
    checks = by_name(result)
    assert set(checks) == CHECKS and all(e.passed for e in checks.values()), {
        n: e.description for n, e in checks.items()
    }
    (mat,) = result.get_asset_materialization_events()
    meta = mat.step_materialization_data.materialization.metadata
    assert mat.partition == "2026-11-24" and meta["dagster/row_count"].value == meta["source_rows"].value == 40
    assert [c.name for c in meta["dagster/column_schema"].schema.columns] == COLUMNS

    manifest = manifest_of(env, source_url, "2026-11-24")
    frame = pd.read_json(
        io.BytesIO(stored(env, manifest.artifact_key)), lines=True, compression="gzip", dtype=False, precise_float=True
    )
    with psycopg.connect(source_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(
            "SELECT id, query, status, results, metadata, created_at FROM investigations "
            "WHERE created_at >= '2026-11-24T00:00:00Z' AND created_at < '2026-11-25T00:00:00Z' ORDER BY created_at"
        ).fetchall()
    assert list(frame.columns) == COLUMNS and len(frame) == len(rows) == 40
    for src, got in zip(rows, frame.sort_values("created_at").to_dict("records"), strict=True):
        assert got["id"] == str(src["id"]) and got["query"] == src["query"] and got["status"] == src["status"]
        assert got["results"] == src["results"] and got["metadata"] == src["metadata"]
        assert pd.Timestamp(got["created_at"]) == pd.Timestamp(src["created_at"])
    text = newest_manifest_path(env / "backups" / series(source_url) / "2026-11-24").read_text()
    assert PASSWORD not in text and PASSWORD not in all_event_text(result)


def test_a_ranged_run_exports_each_day_in_one_snapshot_with_its_own_results(env, source_url):
    """What a backfill (BackfillPolicy.single_run()) and the daily trailing-week schedule launch."""
    result = run_job("investigations_json_export_job", tags={RANGE_START: "2026-11-18", RANGE_END: "2026-11-24"})
    assert result.success, failure_messages(result)
    mats = {
        m.partition: m.step_materialization_data.materialization.metadata
        for m in result.get_asset_materialization_events()
    }
    assert sorted(mats) == [f"2026-11-{d}" for d in range(18, 25)]
    assert all(m["dagster/row_count"].value == 40 for m in mats.values())
    assert mats["2026-11-24"]["partitions_in_run"].value == 7
    assert len({m["snapshot_at"].value for m in mats.values()}) == 1  # one transaction for the whole range
    assert len({m["storage_uri"].value for m in mats.values()}) == 7
    per_partition = [e for e in evaluations(result) if e.check_name != "freshness"]
    assert len(per_partition) == 7 * 5 and {e.partition for e in per_partition} == set(mats)
    failed = [(e.partition, e.check_name, e.description) for e in evaluations(result) if not e.passed]
    assert failed == [], failed


def test_a_day_without_rows_is_a_valid_empty_export(env, source_url):
    result = run_job("investigations_json_export_job", partition="2026-06-01")
    assert result.success, failure_messages(result)
    checks = by_name(result)
    assert checks["integrity"].passed and checks["row_count"].passed and checks["schema_drift"].passed
    manifest = manifest_of(env, source_url, "2026-06-01")
    assert manifest.data["contents"]["records"] == manifest.data["contents"]["source_rows"] == 0
    assert gzip.decompress(stored(env, manifest.artifact_key)) == b""


def test_weekly_csv_snapshot_to_s3_opens_in_pandas(env, aws_env, make_bucket, monkeypatch, s3_client, source_url):
    bucket = make_bucket()
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/cidadao")
    result = run_job("agent_instances_csv_export_job", partition="2026-11-15")
    assert result.success, failure_messages(result)
    checks = by_name(result, "agent_instances_csv_export")
    assert set(checks) == CHECKS and all(e.passed for e in checks.values())
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    prefix = f"cidadao/{series(source_url, 'agent_instances', 'weekly')}/2026-11-15/"
    (data_key,) = [k for k in keys if k.startswith(prefix) and k.endswith(".csv.gz")]
    assert any(k.startswith(prefix + "manifest-") for k in keys)
    body = s3_client.get_object(Bucket=bucket, Key=data_key)["Body"].read()
    frame = pd.read_csv(io.BytesIO(body), compression="gzip")
    with psycopg.connect(source_url) as conn:
        names = {r[0] for r in conn.execute("SELECT agent_name FROM agent_instances")}
    assert len(frame) == 16 and set(frame["agent_name"]) == names and "Nanã" in names
    assert list(frame.columns)[:3] == ["id", "agent_name", "agent_type"]


def test_schedules_launch_runs_that_land(env, source_url):
    defs = build_defs()
    daily = defs.resolve_schedule_def("investigations_json_export_schedule")
    weekly = defs.resolve_schedule_def("agent_instances_csv_export_schedule")
    assert daily.cron_schedule == "30 3 * * *" and weekly.cron_schedule == "30 2 * * 0"
    with dg.instance_for_test() as instance:

        def tick(schedule, *when):
            moment = datetime(*when, tzinfo=UTC)
            repo = defs.get_repository_def()  # resolves a RunRequest(partition_key=...)
            with dg.build_schedule_context(
                instance=instance, scheduled_execution_time=moment, repository_def=repo
            ) as context:
                (request,) = schedule.evaluate_tick(context).run_requests
            return request

        daily_request = tick(daily, 2026, 11, 25, 3, 30)
        weekly_request = tick(weekly, 2026, 11, 22, 2, 30)
        first_days = tick(daily, 2025, 1, 3, 3, 30)
    # The day that just ended and the six before it (the strategy's "last 7 days"), clipped at the first partition.
    assert (daily_request.tags[RANGE_START], daily_request.tags[RANGE_END]) == ("2026-11-18", "2026-11-24")
    assert (first_days.tags[RANGE_START], first_days.tags[RANGE_END]) == ("2025-01-01", "2025-01-02")
    assert weekly_request.partition_key == "2026-11-15"  # the Sunday-to-Saturday week that just ended

    daily_run = run_job("investigations_json_export_job", tags=dict(daily_request.tags))
    weekly_run = run_job("agent_instances_csv_export_job", partition=weekly_request.partition_key)
    assert daily_run.success and weekly_run.success
    for day in range(18, 25):
        assert manifest_of(env, source_url, f"2026-11-{day}").data["contents"]["records"] == 40
    assert manifest_of(env, source_url, "2026-11-15", "agent_instances", "weekly").data["contents"]["records"] == 16


# ------------------------------------------------------------------------------------- crafted faults


def _rewrite_consistently(env, manifest: Manifest, content: bytes) -> None:
    """A consistent but short export, as an exporter that lost a row would leave: object and manifest agree."""
    data = gzip.compress(content)
    (env / "backups" / manifest.artifact_key).write_bytes(data)
    m = json.loads(json.dumps(manifest.data))
    m["artifact"].update(
        stored_bytes=len(data),
        stored_sha256=hashlib.sha256(data).hexdigest(),
        raw_bytes=len(content),
        raw_sha256=hashlib.sha256(content).hexdigest(),
        lines=content.count(b"\n"),
    )
    m["contents"]["records"] = content.count(b"\n")
    write_manifest(LocalStorage(env / "backups"), m["series"], Manifest(m))


def test_row_missing_fails_row_count_and_an_edited_file_fails_integrity(env, source_url):
    assert run_job("investigations_json_export_job", partition="2026-11-24").success
    manifest = manifest_of(env, source_url, "2026-11-24")
    lines = gzip.decompress(stored(env, manifest.artifact_key)).splitlines(keepends=True)

    _rewrite_consistently(env, manifest, b"".join(lines[:-1]))
    checks = by_name(run_checks(investigations_checks(), "2026-11-24", "integrity", "row_count"))
    assert checks["integrity"].passed  # the file matches its manifest...
    row_count = checks["row_count"]  # ...but a row of the source is not in it
    assert not row_count.passed and row_count.severity == dg.AssetCheckSeverity.ERROR
    assert row_count.description.startswith("1 row missing") and "40" in row_count.description

    (env / "backups" / manifest.artifact_key).write_bytes(gzip.compress(b"".join(lines[2:])))  # one more row gone
    result = run_checks(investigations_checks(), "2026-11-24", "integrity")
    integrity = by_name(result)["integrity"]
    assert not integrity.passed and integrity.severity == dg.AssetCheckSeverity.ERROR
    assert "SHA-256" in integrity.description and "38 lines, the manifest says 39" in integrity.description
    assert not result.success  # blocking


def test_integrity_failure_blocks_the_run_that_made_the_export(env, source_url, monkeypatch):
    """A blocking check that fails in the export's own run fails that run (dependents would not run)."""
    from cidadao_backup_dagster.defs.exports import checks as checks_module

    real = checks_module.inspect_export

    def lose_a_line(storage, manifest, **options):
        found = real(storage, manifest, **options)
        found.problems.append("simulated: a line vanished")
        return found

    monkeypatch.setattr(checks_module, "inspect_export", lose_a_line)
    result = run_job("investigations_json_export_job", partition="2026-11-24")
    assert not result.success and not by_name(result)["integrity"].passed
    assert any("blocking" in m for m in failure_messages(result))


def test_column_dropped_warns_schema_drift_naming_it(env, source_url):
    assert run_job("agent_instances_csv_export_job", partition="2026-11-08").success
    with psycopg.connect(source_url) as conn:
        conn.execute("ALTER TABLE agent_instances DROP COLUMN tasks_completed")
        conn.execute("ALTER TABLE agent_instances ALTER COLUMN status TYPE varchar(20)")
    result = run_job("agent_instances_csv_export_job", partition="2026-11-15")
    assert result.success  # drift is a warning, the export itself is fine
    drift = by_name(result, "agent_instances_csv_export")["schema_drift"]
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    assert "column 'tasks_completed' dropped (was integer)" in drift.description
    assert "column 'status' retyped text -> character varying(20)" in drift.description
    assert "since 2026-11-08" in drift.description
    header = gzip.decompress(
        stored(env, manifest_of(env, source_url, "2026-11-15", "agent_instances", "weekly").artifact_key)
    )
    assert b"tasks_completed" not in header.splitlines()[0]


def _fake_export(storage, series_key, partition, size, snapshot_at):
    key = f"{series_key}/{partition}/fake_{partition}.jsonl.gz"
    storage.put_bytes(key, b"x" * size)
    artifact = {"key": key, "stored_bytes": size, "stored_sha256": "", "raw_bytes": size, "raw_sha256": ""}
    write_manifest(
        storage,
        series_key,
        Manifest({"partition": partition, "artifact": artifact, "timings": {"snapshot_at": iso(snapshot_at)}}),
    )


@pytest.mark.parametrize("age, severity", [(timedelta(hours=60), "WARN"), (timedelta(days=8), "ERROR")])
def test_stale_export_fires_freshness_and_a_backfill_does_not_hide_it(env, source_url, age, severity):
    storage = LocalStorage(env / "backups")
    now = datetime.now(UTC)
    _fake_export(storage, series(source_url), "2026-11-20", 1000, now - age)  # the newest partition, stale
    _fake_export(storage, series(source_url), "2026-10-01", 1000, now)  # an old day, backfilled just now
    result = run_checks(export_domain().health_checks, None, "freshness")
    fresh = by_name(result)["freshness"]
    assert not fresh.passed and fresh.severity == getattr(dg.AssetCheckSeverity, severity)
    assert "2026-11-20" in fresh.description
    weekly = by_name(result, "agent_instances_csv_export")["freshness"]
    assert not weekly.passed and "No valid export" in weekly.description


def test_size_deviation_warns_against_the_median_of_earlier_exports(env, source_url):
    storage = LocalStorage(env / "backups")
    now = datetime.now(UTC)
    for day in range(10, 17):  # seven earlier exports, each far larger than today's
        _fake_export(storage, series(source_url), f"2026-11-{day}", 100_000, now - timedelta(days=24 - day))
    result = run_job("investigations_json_export_job", partition="2026-11-24")
    assert result.success
    size = by_name(result)["size_deviation"]
    assert not size.passed and size.severity == dg.AssetCheckSeverity.WARN
    assert "median 100,000 of the previous 7 valid exports" in size.description


# ---------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("INVESTIGATIONS_EXPORT_COLUMNS", "id,query,statuz", "'statuz'"),
        ("INVESTIGATIONS_EXPORT_COLUMNS", "id,,query", "empty column name"),
        ("INVESTIGATIONS_EXPORT_TABLE", "public.investigation", "'public.investigation' does not exist"),
        ("INVESTIGATIONS_EXPORT_TIME_COLUMN", "updated", "'updated'"),
        ("EXPORT_GZIP_LEVEL", "12", "out of range"),
    ],
)
def test_bad_settings_fail_the_run_at_launch_naming_them(env, monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    result = run_job("investigations_json_export_job", partition="2026-11-24")
    assert not result.success
    (message,) = failure_messages(result)  # a configuration error is not retried
    assert variable in message and expected in message and PASSWORD not in message
    assert not list((env / "backups").rglob("*.gz"))


def test_configured_columns_change_what_is_exported(env, monkeypatch, source_url):
    monkeypatch.setenv("INVESTIGATIONS_EXPORT_COLUMNS", "id, status ,created_at,user_id")
    monkeypatch.setenv("AGENT_INSTANCES_EXPORT_COLUMNS", "agent_name,status")
    assert run_job("investigations_json_export_job", partition="2026-11-24").success
    assert run_job("agent_instances_csv_export_job", partition="2026-11-15").success
    manifest = manifest_of(env, source_url, "2026-11-24")
    first = json.loads(gzip.decompress(stored(env, manifest.artifact_key)).splitlines()[0])
    assert list(first) == ["id", "status", "created_at", "user_id"]
    weekly = manifest_of(env, source_url, "2026-11-15", "agent_instances", "weekly")
    assert gzip.decompress(stored(env, weekly.artifact_key)).splitlines()[0] == b"agent_name,status"


def test_cli_backfills_a_range_in_one_run(env, tmp_path, source_url):
    """The README's backfill command: a partition range through the real CLI, in one run."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    cmd = [
        str(Path(sys.executable).with_name("dg")), "launch", "-m", "cidadao_backup_dagster.definitions",
        "--assets", "investigations_json_export", "--partition-range", "2026-11-22...2026-11-24",
    ]  # fmt: skip
    out = subprocess.run(
        cmd, env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("RUN_SUCCESS") == 1 and PASSWORD not in out.stderr + out.stdout
    for day in ("2026-11-22", "2026-11-23", "2026-11-24"):
        assert manifest_of(env, source_url, day).data["contents"]["records"] == 40


@pytest.mark.skipif(not shutil.which("age-keygen"), reason="the age CLI is not installed (apt install age)")
def test_encrypted_exports_decrypt_with_the_stock_age_cli_and_verify_deeply_with_the_identity(
    env, monkeypatch, source_url
):
    key = env / "key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout
    monkeypatch.setenv("BACKUP_AGE_RECIPIENTS", public.strip())
    shallow = run_job("investigations_json_export_job", partition="2026-11-24")  # the worker holds no identity
    assert shallow.success, failure_messages(shallow)
    checks = by_name(shallow)
    assert checks["integrity"].passed and "set BACKUP_AGE_IDENTITY_FILE" in checks["integrity"].description
    assert checks["row_count"].passed and "counted while exporting" in checks["row_count"].description
    assert checks["encrypted"].passed and checks["encrypted"].description == "age-encrypted"

    manifest = manifest_of(env, source_url, "2026-11-24")
    assert manifest.artifact_key.endswith(".jsonl.gz.age") and manifest.data["artifact"]["encryption"]
    path = env / "backups" / manifest.artifact_key
    plain = subprocess.run(f"age -d -i {key} {path} | zcat", shell=True, check=True, capture_output=True).stdout
    frame = pd.read_json(io.BytesIO(plain), lines=True, dtype=False)
    assert len(frame) == 40 and list(frame.columns) == COLUMNS

    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(key))
    deep = by_name(run_checks(investigations_checks(), "2026-11-24", "integrity", "row_count"))
    assert deep["integrity"].passed and deep["integrity"].description.startswith("Every byte re-read")
    assert deep["row_count"].passed and deep["row_count"].description == "40 records = the source's 40 at export time"


def test_an_unencrypted_export_in_production_is_an_error(env, monkeypatch):
    monkeypatch.setenv("CIDADAO_ENV", "production")
    result = run_job("agent_instances_csv_export_job", partition="2026-11-15")
    assert result.success  # the export exists; the check says it must not stay like this
    check = by_name(result, "agent_instances_csv_export")["encrypted"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "BACKUP_AGE_RECIPIENTS" in check.description
