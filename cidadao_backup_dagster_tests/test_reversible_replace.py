"""Redis recovery never destroys what it cannot give back: `if_target_not_empty: flush` first snapshots the
target into a series of its own and checks storage holds it; when that snapshot fails, nothing is flushed.
(The PostgreSQL side, restore_postgres's staging database and swap by rename, is in test_recovery.py.)"""

import pytest

from cidadao_backup_dagster.core.artifacts.manifest import valid_manifests
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.errors import BackupError
from cidadao_backup_dagster.core.protection.audit import read_audit
from cidadao_backup_dagster.core.redis.backup import RedisEndpoint, backup_redis
from cidadao_backup_dagster.core.redis.flush import pre_flush_series
from cidadao_backup_dagster.core.redis.restore import restore_snapshot

from .test_redis_dagster import env, run  # noqa: F401 - the env fixture and the job runner

pytest_plugins = ["cidadao_backup_dagster_tests.redis_fixtures"]  # redis_server

SERIES = "redis/cache/hourly"
PARTITION = "2026-11-24-13:00"


@pytest.fixture
def snapshot_of_two_keys(redis_server, tmp_path):
    source = redis_server()
    source.client().mset({"a": "1", "b": "2"})
    storage = LocalStorage(tmp_path / "backups")
    manifest = backup_redis(
        RedisEndpoint.from_url(source.url()), storage, series=SERIES, partition=PARTITION, source_name="cache"
    )
    return storage, manifest


def test_flush_restore_first_keeps_a_snapshot_of_the_target_that_restores(snapshot_of_two_keys, redis_server):
    storage, manifest = snapshot_of_two_keys
    target = redis_server()
    target.client().set("precious", "keep me")
    target.client(3).set("other", "x")
    endpoint = RedisEndpoint.from_url(target.url())
    result = restore_snapshot(storage, manifest, endpoint, if_not_empty="flush", confirm=target.name, say=print)
    assert result.ok and result.flushed and target.client().get("precious") is None and target.client().dbsize() == 2

    (kept,) = valid_manifests(storage, pre_flush_series(endpoint))
    assert result.pre_flush_snapshot == storage.uri(kept.artifact_key)
    assert kept.data["contents"]["keys_total"] == 2 and kept.data["run"]["purpose"].startswith("pre-flush")
    undo = redis_server()  # the snapshot gives the flushed keys back
    restore_snapshot(storage, kept, RedisEndpoint.from_url(undo.url()), say=print)
    assert undo.client().get("precious") == b"keep me" and undo.client(3).get("other") == b"x"

    merged = restore_snapshot(storage, manifest, endpoint, if_not_empty="merge", say=print)
    assert merged.pre_flush_snapshot == "" and len(valid_manifests(storage, pre_flush_series(endpoint))) == 1


def test_flush_is_refused_when_the_target_cannot_be_snapshotted(snapshot_of_two_keys, redis_server):
    storage, manifest = snapshot_of_two_keys
    # No SYNC and no DUMP (as for an ACL user without them): neither snapshot mode can read the target.
    target = redis_server(conf=('rename-command SYNC ""', 'rename-command DUMP ""'))
    target.client().set("precious", "keep me")
    endpoint = RedisEndpoint.from_url(target.url())
    with pytest.raises(BackupError, match=r"Refusing to flush .*snapshot.*Nothing was changed"):
        restore_snapshot(storage, manifest, endpoint, if_not_empty="flush", confirm=target.name, say=print)
    assert target.client().get("precious") == b"keep me" and target.client().dbsize() == 1
    assert storage.list_keys(pre_flush_series(endpoint) + "/") == []


def test_restore_redis_job_records_the_pre_flush_snapshot(redis_server, env, monkeypatch):  # noqa: F811
    source = redis_server()
    source.client().mset({"a": "1", "b": "2"})
    monkeypatch.setenv("REDIS_URL", source.url())
    backup_redis(  # the hourly snapshot restore_redis picks as 'latest' (written directly: not under test here)
        RedisEndpoint.from_url(source.url()),
        LocalStorage(env / "backups"),
        series=SERIES,
        partition=PARTITION,
        source_name="cache",
    )
    target = redis_server()
    target.client().set("precious", "keep me")
    result = run(
        "restore_redis", {"target_url": target.url(), "if_target_not_empty": "flush", "confirm_target": target.name}
    )
    assert result.success
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    uri = event.event_specific_data.metadata["pre_flush_snapshot"].value
    assert uri.startswith(f"file://{env}/backups/redis/127.0.0.1_{target.port}/pre-flush/")
    (record,) = [r for r in read_audit(LocalStorage(env / "backups")) if r["action"] == "restore"]
    assert record["result"] == "ok" and record["details"]["pre_flush_snapshot"] == uri
    assert target.client().get("precious") is None and target.client().dbsize() == 2
