"""The Redis domain in Dagster, end to end against private redis-server processes: definitions load without
REDIS_URL, the hourly snapshot job with its checks (local and S3), the persistence sensor (one incident, one
run), restore_redis and flush_redis_cache with their refusals, the restore drill, schedules, and secrets."""

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from cidadao_backup_dagster.core.artifacts.manifest import Manifest, iso, read_manifest, valid_manifests, write_manifest
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.protection.audit import read_audit
from cidadao_backup_dagster.core.redis.backup import RedisEndpoint, backup_redis
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.defs.resources import RedisSource
from cidadao_backup_dagster.defs.sources import REDIS_SNAPSHOT_POOL

pytest.register_assert_rewrite("cidadao_backup_dagster_tests.redis_fixtures")

from .conftest import free_port, newest_manifest_path  # noqa: E402
from .redis_fixtures import PASSWORD, RedisServer, assert_same_data, dataset, populate_every_type  # noqa: E402

pytest_plugins = ["cidadao_backup_dagster_tests.redis_fixtures"]  # redis_server, tls_cert

PARTITION = "2026-11-24-13:00"
SERIES = "redis/cache/hourly"
OPS = {"restore_redis": "restore_redis_op", "flush_redis_cache": "flush_redis_cache_op"}


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in (
        "REDIS_URL",
        "REDIS_SOURCE_NAME",
        "REDIS_SNAPSHOT_MODE",
        "REDIS_SERVER_BIN",
        "REDIS_TARGET_PASSWORD",
        "BACKUP_AGE_RECIPIENTS",
        "BACKUP_AGE_IDENTITY_FILE",
        "CIDADAO_ENV",
        "RESTORE_TMPDIR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return tmp_path


@pytest.fixture
def source(redis_server, env, monkeypatch):
    """A password-protected server with every type, addressed through REDIS_URL."""
    server = redis_server(password=PASSWORD)
    populate_every_type(server.client(), server)
    monkeypatch.setenv("REDIS_URL", server.url(password=PASSWORD))
    return server


def run(name, arg=None):
    """run(job, partition_key) for asset jobs, run(job, {config}) for the recovery jobs."""
    partition, config = (None, arg) if isinstance(arg, dict) else (arg, None)
    run_config = {"ops": {OPS[name]: {"config": config or {}}}} if name in OPS else None
    return (
        build_defs()
        .resolve_job_def(name)
        .execute_in_process(
            run_config=run_config,
            partition_key=partition,
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    )


def failures(result) -> list[str]:
    return [e.event_specific_data.error.message for e in result.all_events if e.is_step_failure]


def checks(result, asset="redis_snapshot") -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key.path == [asset]}


def all_text(result) -> str:
    return "\n".join(repr(e) for e in result.all_events)


def materialization_metadata(result) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


# ------------------------------------------------------------------------------------------ loading


def test_definitions_load_without_redis_url_and_the_snapshot_fails_naming_it(env):
    defs = build_defs()
    repo = defs.get_repository_def()
    node = repo.assets_defs_by_key[dg.AssetKey("redis_snapshot")]
    assert node.specs_by_key[dg.AssetKey("redis_snapshot")].kinds >= {"redis"}
    assert node.op.pool == REDIS_SNAPSHOT_POOL
    check_names = {(k.asset_key.to_user_string(), k.name) for k in repo.asset_graph.asset_check_keys}
    for name in ("integrity", "size_deviation", "encrypted", "freshness", "persistence_config", "last_save"):
        assert ("redis_snapshot", name) in check_names
    for name in ("drill_passed", "drill_duration_within_rto", "recent_passing_drill"):
        assert ("redis_restore_drill", name) in check_names
    assert {"redis_snapshot_schedule", "redis_restore_drill_schedule"} <= {s.name for s in repo.schedule_defs}
    for schedule in repo.schedule_defs:
        if schedule.name.startswith("redis"):
            assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    (sensor,) = [s for s in repo.sensor_defs if s.name == "redis_persistence_sensor"]
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    defs.resolve_job_def("postgres_daily_backup_job")  # the PostgreSQL side is untouched by a missing REDIS_URL

    result = run("redis_snapshot_job", PARTITION)
    assert not result.success
    (message,) = failures(result)  # a configuration error is not retried
    assert "REDIS_URL: is not set" in message and "Fix:" in message


# ----------------------------------------------------------------------------------------- snapshots


def test_snapshot_job_runs_its_checks_and_keeps_the_password_out(source, env):
    result = run("redis_snapshot_job", PARTITION)
    assert result.success, failures(result)
    meta = materialization_metadata(result)
    assert meta["format"] == "rdb" and meta["keys"] == sum(source.client(db).dbsize() for db in (0, 1, 5))
    assert meta["rdb_version"] >= 9 and meta["crc64"] and meta["keys_per_db"].keys() == {"0", "1", "5"}
    by_name = checks(result)
    assert by_name["integrity"].passed, by_name["integrity"].description
    assert by_name["size_deviation"].passed and by_name["freshness"].passed and by_name["encrypted"].passed
    last_save = by_name["last_save"]  # the test server runs with save "": it has never saved its writes
    assert not last_save.passed and last_save.severity == dg.AssetCheckSeverity.ERROR
    assert "never completed an RDB save" in last_save.description and "BGSAVE" in last_save.description
    config = by_name["persistence_config"]  # the test server runs with save "" and appendonly no
    assert not config.passed and config.severity == dg.AssetCheckSeverity.WARN and "AOF is off" in config.description
    folder = env / "backups" / "redis" / "cache" / "hourly" / "2026-11-24-1300"
    assert PASSWORD not in all_text(result)
    assert PASSWORD not in newest_manifest_path(folder).read_text()


def test_snapshot_job_to_s3(source, env, aws_env, make_bucket, monkeypatch):
    bucket = make_bucket("cbd-redis")
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/backups")
    result = run("redis_snapshot_job", PARTITION)
    assert result.success, failures(result)
    assert checks(result)["integrity"].passed
    assert materialization_metadata(result)["storage_uri"].startswith(f"s3://{bucket}/backups/redis/cache/hourly/")


def test_logical_mode_is_configurable(redis_server, env, monkeypatch):
    server = redis_server()
    populate_every_type(server.client(), server)
    monkeypatch.setenv("REDIS_URL", server.url())
    monkeypatch.setenv("REDIS_SNAPSHOT_MODE", "logical")
    result = run("redis_snapshot_job", PARTITION)
    assert result.success and materialization_metadata(result)["format"] == "logical"
    assert checks(result)["integrity"].passed
    monkeypatch.setenv("REDIS_SNAPSHOT_MODE", "fast")
    assert "REDIS_SNAPSHOT_MODE" in failures(run("redis_snapshot_job", PARTITION))[0]


def test_wrong_password_fails_without_leaking_or_storing(source, env, monkeypatch):
    monkeypatch.setenv("REDIS_URL", source.url(password="not-" + PASSWORD))
    result = run("redis_snapshot_job", PARTITION)
    assert not result.success
    assert "rejected the credentials" in failures(result)[0]
    assert PASSWORD not in all_text(result)
    assert not (env / "backups" / "redis").exists() or not list((env / "backups" / "redis").rglob("*.zst"))


def test_freshness_judges_the_newest_partition_hourly(source, env):
    assert run("redis_snapshot_job", PARTITION).success
    storage = LocalStorage(env / "backups")
    manifest = read_manifest(storage, SERIES, "2026-11-24-1300")
    data = json.loads(manifest.to_json())
    data["timings"]["snapshot_at"] = iso(datetime.now(UTC) - timedelta(hours=3))
    write_manifest(storage, SERIES, Manifest(data))
    result = run("backup_health_checks_job")
    fresh = checks(result)["freshness"]
    assert not fresh.passed and fresh.severity == dg.AssetCheckSeverity.ERROR and "3.0 h old" in fresh.description
    assert {"persistence_config", "last_save"} <= checks(result).keys()


def test_schedule_snapshots_the_hour_that_ended(env):
    defs = build_defs()
    schedule = defs.resolve_schedule_def("redis_snapshot_schedule")
    assert schedule.cron_schedule == "5 * * * *"
    tick = datetime(2026, 11, 24, 14, 5, tzinfo=UTC)
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance=instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def()
        ) as context,
    ):
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-24-13:00"


# -------------------------------------------------------------------------------------------- sensor


def _tick(url, cursor=None):
    defs = build_defs()
    sensor = defs.resolve_sensor_def("redis_persistence_sensor")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={"redis_source": RedisSource(redis_url=url)},
            repository_def=defs.get_repository_def(),
        )
        return sensor.evaluate_tick(context)


def test_persistence_sensor_one_incident_one_run(redis_server, env, tmp_path):
    healthy = redis_server()
    data = _tick(healthy.url())
    assert not data.run_requests and "healthy" in data.skip_message and not data.cursor

    broken = redis_server(("enable-protected-configs yes",))
    client = broken.client()
    client.set("k", "v")
    doomed = tmp_path / "doomed"
    doomed.mkdir()
    client.config_set("dir", str(doomed))
    doomed.rmdir()
    client.bgsave()
    for _ in range(500):  # wait for the failed child (a readiness wait, not a timing assertion)
        if client.info("persistence")["rdb_last_bgsave_status"] == "err":
            break
        __import__("time").sleep(0.02)
    data = _tick(broken.url())
    (request,) = data.run_requests
    assert request.run_key.startswith("redis-persistence-bgsave-failed-")
    assert request.partition_key and data.cursor == request.run_key.removeprefix("redis-persistence-")
    again = _tick(broken.url(), cursor=data.cursor)
    assert not again.run_requests and "already" in again.skip_message

    missing = _tick("")
    assert not missing.run_requests and "REDIS_URL" in missing.skip_message


def test_persistence_sensor_treats_a_server_that_never_saved_as_an_incident(redis_server, env):
    server = redis_server()  # save "": LASTSAVE is its start time, so it looked "saved a minute ago"
    client = server.client()
    client.mset({f"k{i}": i for i in range(10)})
    data = _tick(server.url())
    (request,) = data.run_requests
    started = client.info("persistence")["rdb_last_save_time"]
    assert request.run_key == f"redis-persistence-never-saved-{started}"
    assert not _tick(server.url(), cursor=data.cursor).run_requests  # one incident, one run

    client.save()  # a real save ends the incident
    data = _tick(server.url(), cursor=data.cursor)
    assert not data.run_requests and "healthy" in data.skip_message


# ------------------------------------------------------------------------------------------- recovery


def test_restore_redis_job_round_trip_and_refusals(source, redis_server, env, monkeypatch):
    before = dataset(source)
    assert run("redis_snapshot_job", PARTITION).success
    target = redis_server()
    result = run("restore_redis", {"target_url": target.url()})
    assert result.success, failures(result)
    assert_same_data(before, dataset(target))

    target.client().set("extra", "x")
    refused = run("restore_redis", {"target_url": target.url(), "snapshot": PARTITION})
    assert not refused.success and "Refusing" in failures(refused)[0] and "confirm_target" in failures(refused)[0]
    flushed = run(
        "restore_redis", {"target_url": target.url(), "if_target_not_empty": "flush", "confirm_target": target.name}
    )
    assert flushed.success and target.client().get("extra") is None

    with_password = run("restore_redis", {"target_url": target.url(password="pw")})
    assert "REDIS_TARGET_PASSWORD" in failures(with_password)[0]
    unknown = run("restore_redis", {"target_url": target.url(), "snapshot": "2020-01-01-00:00"})
    assert "No snapshot for partition 2020-01-01-00:00" in failures(unknown)[0]


def test_restore_into_a_password_protected_target(source, redis_server, env, monkeypatch):
    assert run("redis_snapshot_job", PARTITION).success
    target = redis_server(password="target-pw")
    monkeypatch.setenv("REDIS_TARGET_PASSWORD", "target-pw")
    result = run("restore_redis", {"target_url": target.url()})
    assert result.success, failures(result)
    assert "target-pw" not in all_text(result)
    assert target.client().dbsize() == source.client().dbsize()


def test_flush_redis_cache_needs_the_targets_name(source, env):
    wrong = run("flush_redis_cache", {"confirm_target": "yes"})
    assert not wrong.success and "Refusing to FLUSHALL" in failures(wrong)[0]
    assert source.client().dbsize() > 0
    right = run("flush_redis_cache", {"confirm_target": source.name})
    assert right.success
    assert all(source.client(db).dbsize() == 0 for db in (0, 1, 5))
    records = [r for r in read_audit(LocalStorage(env / "backups")) if r["action"] == "flush"]
    assert [r["result"] for r in records] == ["refused", "ok"]
    assert records[1]["artifact"] == f"redis://127.0.0.1:{source.port}/0" and records[1]["details"]["keys_removed"] > 0
    # a flush is reversible: a verified snapshot of the target was taken first, and it holds every key flushed
    (out,) = [e for e in right.all_events if e.event_type_value == "STEP_OUTPUT"]
    uri = out.event_specific_data.metadata["pre_flush_snapshot"].value
    assert "/pre-flush/" in uri and records[1]["details"]["pre_flush_snapshot"] == uri
    (manifest,) = valid_manifests(LocalStorage(env / "backups"), f"redis/127.0.0.1_{source.port}/pre-flush")
    assert manifest.data["contents"]["keys_total"] == records[1]["details"]["keys_removed"]


# ---------------------------------------------------------------------------------------------- drill


def test_restore_drill_job_and_its_checks(source, env):
    assert run("redis_snapshot_job", PARTITION).success
    result = run("redis_restore_drill_job", "2026-10-01")
    assert result.success, failures(result)
    by_name = checks(result, "redis_restore_drill")
    assert by_name["drill_passed"].passed and by_name["drill_duration_within_rto"].passed
    (path,) = (env / "backups" / "drills" / "redis" / "cache" / "2026-10-01").glob("report-*.json")
    report = json.loads(path.read_text())
    assert report["passed"] and report["backup_partition"] == PARTITION and report["rto_seconds"] == 300
    health = run("backup_health_checks_job")
    assert checks(health, "redis_restore_drill")["recent_passing_drill"].passed


def test_drill_without_snapshots_fails_clearly(env):
    result = run("redis_restore_drill_job", "2026-10-01")
    assert not result.success and "No valid Redis snapshot" in failures(result)[0]


# -------------------------------------------------------------------------------------- README runbook


def redis_runbook_block() -> str:
    readme = (Path(__file__).resolve().parents[1] / "docs" / "recovery.md").read_text()
    match = re.search(re.escape("### Restore a Redis snapshot by hand") + r".*?```bash\n(.*?)```", readme, re.S)
    assert match, "docs/recovery.md has no Redis runbook block"
    return match.group(1)


@pytest.mark.parametrize("mode", ["rdb", "logical"])
def test_readme_redis_runbook_restores_by_hand(source, env, monkeypatch, mode):
    monkeypatch.setenv("REDIS_SNAPSHOT_MODE", mode)
    before = dataset(source)
    assert run("redis_snapshot_job", PARTITION).success
    port = free_port()
    target = f"redis://127.0.0.1:{port}/0"
    if mode == "logical":
        server = RedisServer(env / "target")
        port, target = server.port, server.url()
    vars_ = {
        "SNAP_DIR": str(env / "backups" / "redis" / "cache" / "hourly" / "2026-11-24-1300"),
        "WORK": str(env / "work"),
        "PORT": str(port),
        "TARGET_URL": target,
    }
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", redis_runbook_block()],
            env={**os.environ, **vars_},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        for db, keys in before.items():
            assert f"db{db}: snapshot {len(keys)} keys, restored {len(keys)}" in proc.stdout
        restored = RedisServer.__new__(RedisServer)
        restored.port, restored.tls, restored.password = port, None, None
        assert_same_data(before, dataset(restored))
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)


# ------------------------------------------------------------------------------------------ retention


def test_retention_expires_old_snapshots_but_keeps_the_newest_and_the_drill_proven(redis_server, env, monkeypatch):
    server = redis_server()
    server.client().set("k", "v")
    monkeypatch.setenv("REDIS_URL", server.url())
    monkeypatch.setenv("RETENTION_MIN_KEEP", "1")
    storage = LocalStorage(env / "backups")
    old = iso(datetime.now(UTC) - timedelta(days=10))
    hours = [f"2026-11-01-0{h}:00" for h in range(4)]
    for hour in hours:
        manifest = backup_redis(
            RedisEndpoint.from_url(server.url()), storage, series=SERIES, partition=hour, source_name="cache"
        )
        data = json.loads(manifest.to_json())
        data["timings"]["snapshot_at"] = old
        write_manifest(storage, SERIES, Manifest(data))
        storage.delete(manifest.key)  # only the aged copy of the manifest stays: the snapshot is 10 days old
    report = {"passed": True, "partition": "2026-10-01", "backup_partition": hours[0], "finished_at": old}
    storage.put_bytes("drills/redis/cache/2026-10-01/report.json", json.dumps(report).encode())
    result = (
        build_defs()
        .resolve_job_def("apply_retention")
        .execute_in_process(
            run_config={"ops": {"apply_retention_op": {"config": {"dry_run": False}}}},
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    )
    assert result.success, failures(result)
    left = sorted({k.split("/")[3] for k in storage.list_keys("redis/cache/hourly/")})
    assert left == ["2026-11-01-0000", "2026-11-01-0300"]  # drill-proven and newest


# ------------------------------------------------------------------------------------------ encryption


@pytest.mark.skipif(not shutil.which("age-keygen"), reason="the age CLI is not installed (apt install age)")
def test_encrypted_snapshot_verifies_deeply_only_with_the_identity_and_restores(source, redis_server, env, monkeypatch):
    key = env / "key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.setenv("BACKUP_AGE_RECIPIENTS", public)
    before = dataset(source)
    result = run("redis_snapshot_job", PARTITION)
    assert result.success, failures(result)
    assert materialization_metadata(result)["encrypted"] and checks(result)["encrypted"].passed
    integrity = checks(result)["integrity"]
    assert integrity.passed and "encrypted" in integrity.metadata["content_checked"].value
    (obj,) = (env / "backups" / "redis" / "cache" / "hourly" / "2026-11-24-1300").glob("*.rdb.zst.age")
    assert not obj.read_bytes().startswith(b"\x28\xb5\x2f\xfd")  # not a bare zstd frame
    rdb = subprocess.run(f"age -d -i {key} {obj} | zstd -d", shell=True, check=True, capture_output=True).stdout
    assert rdb.startswith(b"REDIS") and rdb[-9] == 0xFF  # the stock age CLI decrypts it to a whole RDB

    target = redis_server()
    refused = run("restore_redis", {"target_url": target.url()})
    assert "BACKUP_AGE_IDENTITY_FILE" in failures(refused)[0] and target.client().dbsize() == 0
    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(key))
    deep = run("redis_snapshot_job", PARTITION)
    assert checks(deep)["integrity"].passed and checks(deep)["integrity"].metadata["crc64_verified"].value
    assert run("restore_redis", {"target_url": target.url()}).success
    assert_same_data(before, dataset(target))


def test_unencrypted_snapshot_in_production_is_an_error(source, env, monkeypatch):
    monkeypatch.setenv("CIDADAO_ENV", "production")
    check = checks(run("redis_snapshot_job", PARTITION))["encrypted"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "BACKUP_AGE_RECIPIENTS" in check.description


# ------------------------------------------------------------------------------- no payload in any message

SECRET = "session-token-SECRET123"  # a value: must never reach an event, a log line or an audit record


@pytest.mark.parametrize(
    "mode, target_conf, reason",
    [
        # the target's memory is full: every RESTORE is refused with OOM
        ("rdb", ("maxmemory 1", "maxmemory-policy noeviction"), "OOM"),
        # RESTORE disabled (managed services do this): the server itself echoes the command's first arguments
        ("logical", ('rename-command RESTORE ""',), "unknown command"),
    ],
)
def test_failing_restore_names_the_key_and_reason_never_the_value(
    redis_server, env, monkeypatch, tmp_path, capfd, caplog, mode, target_conf, reason
):
    source = redis_server()
    client = source.client()
    client.set("session:alice", SECRET)
    client.hset("session:bob", mapping={"token": SECRET, "user": "bob"})
    client.rpush("session:carol", SECRET)
    monkeypatch.setenv("REDIS_URL", source.url())
    monkeypatch.setenv("REDIS_SNAPSHOT_MODE", mode)
    target = redis_server(conf=target_conf)
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        defs = build_defs()
        assert (
            defs.resolve_job_def("redis_snapshot_job")
            .execute_in_process(partition_key=PARTITION, instance=instance, raise_on_error=False)
            .success
        )
        result = defs.resolve_job_def("restore_redis").execute_in_process(
            run_config={"ops": {"restore_redis_op": {"config": {"target_url": target.url()}}}},
            instance=instance,
            raise_on_error=False,
        )
        events = [repr(e) for r in instance.get_runs() for e in instance.all_logs(r.run_id)]
    assert not result.success
    (message,) = failures(result)
    assert reason in message, message
    assert re.search(r"key 'session:(alice|bob|carol)'", message), message
    assert target.client().dbsize() == 0

    storage_root = Path(env) / "backups"
    audit_records = [p for p in storage_root.rglob("*") if p.is_file() and "/audit/" in str(p)]
    restore_audits = [json.loads(p.read_text()) for p in audit_records if "_restore_" in p.name]
    assert [a["result"] for a in restore_audits] == ["failed"] and "session:" in restore_audits[0]["details"]["error"]
    output = capfd.readouterr()
    haystacks = {str(p): p.read_bytes() for p in home.rglob("*") if p.is_file()}  # event log, runs, compute logs
    haystacks.update({str(p): p.read_bytes() for p in audit_records})
    haystacks["event log"] = "\n".join(events).encode()
    haystacks["run events"] = all_text(result).encode()
    haystacks["stdout/stderr"] = (output.out + output.err).encode()
    haystacks["python logging"] = "\n".join(r.getMessage() for r in caplog.records).encode()
    leaks = [where for where, data in haystacks.items() if b"SECRET123" in data]
    assert not leaks, f"the value was printed in {leaks}"
