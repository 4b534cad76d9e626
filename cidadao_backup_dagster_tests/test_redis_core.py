"""Redis core against real redis-server processes started per test: CRC64, the RDB verifier, snapshots over
SYNC (diskless and disk-based, TLS, ACL users), the logical fallback, restores key by key, refusals, failures
that leave nothing behind, persistence verdicts."""

import io
import os
import random
import shutil
import subprocess
import time
from datetime import UTC, datetime

import pytest
import zstandard

from cidadao_backup_dagster.core.artifacts.manifest import Manifest, read_manifest, write_manifest
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.errors import BackupError, ConfigurationError
from cidadao_backup_dagster.core.redis.backup import RedisEndpoint, RedisSnapshotSettings, backup_redis
from cidadao_backup_dagster.core.redis.crc64 import Crc64, crc64, crc64_py
from cidadao_backup_dagster.core.redis.drill import _copy_into_throwaway, run_redis_drill
from cidadao_backup_dagster.core.redis.flush import flush_all
from cidadao_backup_dagster.core.redis.health import (
    Persistence,
    last_save_verdict,
    persistence_config_verdict,
    persistence_incident,
    read_persistence,
)
from cidadao_backup_dagster.core.redis.rdb import RdbVerifier, check_logical_stream, dump_payload_ok
from cidadao_backup_dagster.core.redis.records import _records_from_logical, copy_records
from cidadao_backup_dagster.core.redis.restore import restore_snapshot
from cidadao_backup_dagster.core.redis.snapshots import select_snapshot
from cidadao_backup_dagster.core.redis.verify import verify_redis_artifact

pytest.register_assert_rewrite("cidadao_backup_dagster_tests.redis_fixtures")

from .redis_fixtures import PASSWORD, assert_same_data, bulk_strings, dataset, populate_every_type  # noqa: E402

pytest_plugins = ["cidadao_backup_dagster_tests.redis_fixtures"]  # redis_server, tls_cert

SERIES = "redis/cache/hourly"
PARTITION = "2026-11-24-13:00"


def snapshot(url, storage, mode="auto", partition=PARTITION, warnings=None):
    endpoint = RedisEndpoint.from_url(url)
    return backup_redis(
        endpoint,
        storage,
        series=SERIES,
        partition=partition,
        source_name="cache",
        settings=RedisSnapshotSettings(mode=mode),
        warn=(warnings.append if warnings is not None else print),
    )


def stored_keys(storage) -> list[str]:
    return storage.list_keys("redis/")


# ------------------------------------------------------------------------------------------- CRC64


def test_crc64_matches_redis_check_value_and_reference_for_any_chunking():
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA  # the value Redis's own crc64 test asserts
    rng = random.Random(7)
    data = rng.randbytes(300_001)
    reference = crc64_py(data)
    assert crc64(data) == reference
    for _ in range(5):
        c, pos = Crc64(), 0
        while pos < len(data):
            step = rng.choice([1, 9, 511, 32_768, 65_537, 100_000])
            c.update(data[pos : pos + step])
            pos += step
        assert c.value == reference
    assert crc64(data[100:], crc64(data[:100])) == reference


# ------------------------------------------------------------------------------------- round trips


def test_rdb_round_trip_of_every_type_key_by_key(redis_server, storage):
    source = redis_server()
    populate_every_type(source.client(), source)
    before = dataset(source)
    manifest = snapshot(source.url(), storage, mode="rdb")
    contents = manifest.data["contents"]
    assert manifest.data["kind"] == "redis-rdb" and contents["format"] == "rdb"
    assert contents["crc64_verified"] and contents["rdb_version"] >= 9 and contents["diskless_transfer"]
    assert contents["keys_per_db"] == {str(db): len(keys) for db, keys in before.items()}
    assert manifest.data["source"]["redis_version"] == contents["redis_version_in_rdb"]
    assert manifest.partition == "2026-11-24-1300" and manifest.data["dagster_partition"] == PARTITION
    assert ":" not in manifest.artifact_key  # safe path segments on S3, Linux, Windows, scp/rsync/tar
    result = verify_redis_artifact(storage, manifest)
    assert result.ok, result.problems
    assert result.details["crc64_verified"]
    if shutil.which("redis-check-rdb"):
        assert result.details["redis_check_rdb"] == "ok"

    target = redis_server()
    restored = restore_snapshot(storage, manifest, RedisEndpoint.from_url(target.url()), say=print)
    assert restored.ok, restored.mismatches
    assert restored.format == "rdb" and not restored.flushed
    assert_same_data(before, dataset(target))


def test_disk_based_sync_payload_with_length_prefix(redis_server, tmp_path):
    source = redis_server(("repl-diskless-sync no",))
    populate_every_type(source.client(), source)
    storage = LocalStorage(tmp_path / "b")
    manifest = snapshot(source.url(), storage, mode="rdb")
    assert manifest.data["contents"]["diskless_transfer"] is False
    timings = manifest.data["timings"]  # snapshot_at = the RDB's ctime (fork), not when the payload began
    assert timings["started_at"] <= timings["snapshot_at"] <= timings["payload_started_at"]
    assert verify_redis_artifact(storage, manifest).ok


def test_large_instance_round_trip_100k_keys(redis_server, tmp_path):
    source = redis_server()
    bulk_strings(source.client(), 100_000)
    bulk_strings(source.client(2), 5_000, prefix="other")
    storage = LocalStorage(tmp_path / "b")
    manifest = snapshot(source.url(), storage)
    assert manifest.data["contents"]["keys_per_db"] == {"0": 100_000, "2": 5_000}
    target = redis_server()
    result = restore_snapshot(storage, manifest, RedisEndpoint.from_url(target.url()), say=print)
    assert result.ok and result.keys == 105_000
    for db, prefix, n in ((0, "bulk", 100_000), (2, "other", 5_000)):
        src, dst = source.client(db), target.client(db)
        for start in range(0, n, 10_000):
            names = [f"{prefix}:{i}" for i in range(start, min(n, start + 10_000))]
            assert src.mget(names) == dst.mget(names)


def test_tls_snapshot_with_acl_user(redis_server, tls_cert, tmp_path):
    source = redis_server(("user backup on >bk-pass ~* &* +@all",), tls=tls_cert)
    populate_every_type(source.client(), source)
    before = dataset(source)
    storage = LocalStorage(tmp_path / "b")
    url = source.url(user="backup", password="bk-pass", query=f"?ssl_ca_certs={tls_cert['cert']}")
    manifest = snapshot(url, storage, mode="rdb")
    assert manifest.data["source"]["tls"] and manifest.data["source"]["user"] == "backup"
    assert "bk-pass" not in manifest.to_json().decode()
    target = redis_server()
    assert restore_snapshot(storage, manifest, RedisEndpoint.from_url(target.url()), say=print).ok
    assert_same_data(before, dataset(target))


# ---------------------------------------------------------------------------------------- logical


def test_sync_renamed_away_falls_back_to_logical_and_restores(redis_server, tmp_path):
    source = redis_server(('rename-command SYNC ""',))
    populate_every_type(source.client(), source)
    before = dataset(source)
    storage = LocalStorage(tmp_path / "b")
    warnings = []
    manifest = snapshot(source.url(), storage, mode="auto", warnings=warnings)
    assert manifest.data["kind"] == "redis-logical"
    assert any("refused SYNC" in w and "logical" in w for w in warnings)
    assert manifest.data["contents"]["keys_per_db"] == {str(db): len(k) for db, k in before.items()}
    assert manifest.artifact_key.endswith(".resp.zst")
    assert verify_redis_artifact(storage, manifest).ok

    target = redis_server()
    result = restore_snapshot(storage, manifest, RedisEndpoint.from_url(target.url()), say=print)
    assert result.ok, result.mismatches
    assert_same_data(before, dataset(target))

    # The documented by-hand path: zstd -dc file | redis-cli --pipe
    other = redis_server()
    path = tmp_path / "b" / manifest.artifact_key
    zstd = subprocess.Popen(["zstd", "-dc", str(path)], stdout=subprocess.PIPE)
    subprocess.run(["redis-cli", "-p", str(other.port), "--pipe"], stdin=zstd.stdout, check=True, capture_output=True)
    assert zstd.wait() == 0
    assert_same_data(before, dataset(other))


def test_rdb_mode_on_a_server_refusing_sync_fails_clearly(redis_server, tmp_path):
    source = redis_server(('rename-command SYNC ""',))
    source.client().set("k", "v")
    storage = LocalStorage(tmp_path / "b")
    with pytest.raises(BackupError, match="refused SYNC.*REDIS_SNAPSHOT_MODE=logical"):
        snapshot(source.url(), storage, mode="rdb")
    assert stored_keys(storage) == []


def test_acl_user_without_sync_permission_uses_logical_mode(redis_server, tmp_path):
    source = redis_server(("user reader on >rd-pass ~* &* +@all -sync -psync",))
    populate_every_type(source.client(), source)
    storage = LocalStorage(tmp_path / "b")
    warnings = []
    manifest = snapshot(source.url(user="reader", password="rd-pass"), storage, warnings=warnings)
    assert manifest.data["kind"] == "redis-logical" and "NOPERM" in warnings[0]
    assert verify_redis_artifact(storage, manifest).ok


# ---------------------------------------------------------------------------------------- integrity


def _rewrite(storage, manifest: Manifest, raw: bytes) -> Manifest:
    """Store `raw` as the artifact with a manifest that matches it (so only the content checks can object)."""
    import hashlib

    stored = zstandard.ZstdCompressor().compress(raw)
    storage.put_bytes(manifest.artifact_key, stored)
    data = dict(manifest.data)
    data["artifact"] = dict(
        data["artifact"],
        raw_bytes=len(raw),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        stored_bytes=len(stored),
        stored_sha256=hashlib.sha256(stored).hexdigest(),
    )
    new = Manifest(data)
    write_manifest(storage, SERIES, new)
    return new


@pytest.fixture
def rdb_snapshot(redis_server, tmp_path):
    source = redis_server()
    populate_every_type(source.client(), source)
    storage = LocalStorage(tmp_path / "b")
    manifest = snapshot(source.url(), storage, mode="rdb")
    raw = zstandard.ZstdDecompressor().decompressobj().decompress((tmp_path / "b" / manifest.artifact_key).read_bytes())
    return storage, manifest, raw


def test_truncated_rdb_fails_integrity(rdb_snapshot):
    storage, manifest, raw = rdb_snapshot
    for cut in (len(raw) - 3, len(raw) // 2, 20):
        bad = _rewrite(storage, manifest, raw[:cut])
        result = verify_redis_artifact(storage, bad)
        assert not result.ok
        text = "; ".join(result.problems)
        assert "EOF opcode" in text or "truncated" in text, text


def test_flipped_byte_fails_integrity(rdb_snapshot):
    storage, manifest, raw = rdb_snapshot
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01
    bad = _rewrite(storage, manifest, bytes(flipped))
    result = verify_redis_artifact(storage, bad)
    assert any("CRC64 mismatch" in p for p in result.problems), result.problems
    if shutil.which("redis-check-rdb"):
        assert any("redis-check-rdb" in p for p in result.problems), result.problems


def test_stored_object_changed_fails_sha_and_restore_refuses(rdb_snapshot, redis_server):
    storage, manifest, _ = rdb_snapshot
    path = storage.root / manifest.artifact_key
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    assert any("SHA-256" in p for p in verify_redis_artifact(storage, manifest).problems)
    target = redis_server()
    with pytest.raises(BackupError, match="Refusing to restore"):
        restore_snapshot(storage, manifest, RedisEndpoint.from_url(target.url()), say=print)
    assert target.client().dbsize() == 0


def test_rdb_verifier_rejects_garbage_and_reads_header():
    v = RdbVerifier()
    v.feed(b"NOTREDIS" * 10)
    assert "magic" in " ".join(v.finish().problems)


def test_logical_snapshot_corruption_is_detected(redis_server, tmp_path):
    source = redis_server()
    populate_every_type(source.client(), source)
    storage = LocalStorage(tmp_path / "b")
    manifest = snapshot(source.url(), storage, mode="logical")
    raw = zstandard.ZstdDecompressor().decompressobj().decompress((tmp_path / "b" / manifest.artifact_key).read_bytes())
    assert check_logical_stream(io.BytesIO(raw)).ok
    cut = check_logical_stream(io.BytesIO(raw[: len(raw) - 50]))
    assert not cut.ok and "truncated" in " ".join(cut.problems)
    # Flip a byte inside str:plain's DUMP payload ("hello"): the payload's own CRC64 catches it.
    at = raw.index(b"\x00\x05hello") + 2
    flipped = raw[:at] + b"j" + raw[at + 1 :]
    assert "CRC64" in " ".join(check_logical_stream(io.BytesIO(flipped)).problems)
    assert not dump_payload_ok(b"short")
    bad = _rewrite(storage, manifest, raw[: len(raw) - 50])
    assert not verify_redis_artifact(storage, bad).ok


# ------------------------------------------------------------------------------- failures and errors


def test_wrong_password_fails_clearly_and_stores_nothing(redis_server, tmp_path):
    source = redis_server(password=PASSWORD)
    storage = LocalStorage(tmp_path / "b")
    with pytest.raises(BackupError) as err:
        snapshot(source.url(password="wrong-" + PASSWORD), storage)
    text = str(err.value)
    assert "rejected the credentials" in text and "REDIS_URL" in text and PASSWORD not in text
    with pytest.raises(BackupError, match="rejected the credentials|NOAUTH"):
        snapshot(source.url(), storage)  # no password at all
    assert stored_keys(storage) == []
    # the right password works, and never reaches the manifest
    manifest = snapshot(source.url(password=PASSWORD), storage)
    assert PASSWORD not in manifest.to_json().decode()


def test_unreachable_server_fails_clearly_and_stores_nothing(refused_port, tmp_path):
    storage = LocalStorage(tmp_path / "b")
    with pytest.raises(BackupError, match=r"Cannot connect to Redis at redis://127\.0\.0\.1:\d+/0.*REDIS_URL"):
        snapshot(f"redis://:{PASSWORD}@127.0.0.1:{refused_port}", storage)
    assert stored_keys(storage) == []


def test_server_dying_mid_transfer_leaves_nothing(redis_server, tmp_path):
    source = redis_server()
    bulk_strings(source.client(), 200_000)
    storage = LocalStorage(tmp_path / "b")
    endpoint = RedisEndpoint.from_url(source.url())

    def kill_on_first_progress(_p):
        source.stop()

    with pytest.raises(BackupError, match="Nothing was stored"):
        backup_redis(
            endpoint,
            storage,
            series=SERIES,
            partition=PARTITION,
            source_name="cache",
            settings=RedisSnapshotSettings(mode="rdb", progress_every=0.0),
            on_progress=kill_on_first_progress,
        )
    assert stored_keys(storage) == []
    assert not any(p.name.startswith(".") for p in (tmp_path / "b").rglob("*"))


@pytest.mark.parametrize(
    "url, expected",
    [
        ("", "REDIS_URL: is not set"),
        ("http://h:1", "unsupported scheme"),
        ("redis://h:1/abc", "not a number"),
        ("redis://:pw@h:notaport", "cannot be parsed"),
    ],
)
def test_bad_urls_name_the_variable(url, expected):
    with pytest.raises(ConfigurationError, match=expected) as err:
        RedisEndpoint.from_url(url)
    assert "Fix:" in str(err.value) and "pw" not in str(err.value)


def test_endpoint_display_and_tls_options():
    e = RedisEndpoint.from_url(f"rediss://app:{PASSWORD}@cache.internal:6380/2?ssl_cert_reqs=none")
    assert e.display() == "rediss://app@cache.internal:6380/2" and e.name == "cache.internal:6380"
    assert e.tls and e.ssl_cert_reqs == "none" and not e.ssl_check_hostname
    assert PASSWORD not in repr(e) and e.redact(f"x {PASSWORD} y") == "x *** y"


# ----------------------------------------------------------------------------------- restore rules


def test_restore_refuses_non_empty_target_and_flush_needs_the_name(redis_server, tmp_path):
    source = redis_server()
    source.client().mset({"a": "1", "b": "2"})
    storage = LocalStorage(tmp_path / "b")
    manifest = snapshot(source.url(), storage)
    target = redis_server()
    target.client().set("precious", "keep me")
    endpoint = RedisEndpoint.from_url(target.url())
    for kwargs in ({}, {"if_not_empty": "flush"}, {"if_not_empty": "flush", "confirm": "127.0.0.1:1"}):
        with pytest.raises(BackupError, match="Refusing.*Nothing was changed"):
            restore_snapshot(storage, manifest, endpoint, say=print, **kwargs)
        assert target.client().get("precious") == b"keep me" and target.client().dbsize() == 1
    merged = restore_snapshot(storage, manifest, endpoint, if_not_empty="merge", say=print)
    assert merged.ok and target.client().dbsize() == 3
    flushed = restore_snapshot(storage, manifest, endpoint, if_not_empty="flush", confirm=target.name, say=print)
    assert flushed.ok and flushed.flushed and target.client().dbsize() == 2


def test_flushall_only_with_the_targets_name(redis_server):
    target = redis_server()
    target.client().set("k", "v")
    target.client(3).set("k", "v")
    endpoint = RedisEndpoint.from_url(target.url())
    for wrong in ("", "yes", "127.0.0.1", f"redis://{target.name}"):
        with pytest.raises(BackupError, match="Refusing to FLUSHALL"):
            flush_all(endpoint, wrong)
    assert target.client().dbsize() == 1
    assert flush_all(endpoint, target.name) == {0: 1, 3: 1}
    assert target.client().dbsize() == 0 and target.client(3).dbsize() == 0


def test_missing_redis_server_binary_gives_a_clear_error(redis_server, tmp_path, monkeypatch):
    source = redis_server()
    source.client().set("k", "v")
    storage = LocalStorage(tmp_path / "b")
    manifest = snapshot(source.url(), storage, mode="rdb")
    target = redis_server()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(BackupError, match="redis-server is needed.*apt-get install redis-server.*REDIS_SERVER_BIN"):
        restore_snapshot(storage, manifest, RedisEndpoint.from_url(target.url()), say=print)
    with pytest.raises(BackupError, match="REDIS_SERVER_BIN=/nope/redis-server is not an executable"):
        restore_snapshot(storage, manifest, RedisEndpoint.from_url(target.url()), server_bin="/nope/redis-server")
    assert target.client().dbsize() == 0


def test_select_snapshot_accepts_both_key_forms(redis_server, tmp_path):
    source = redis_server()
    source.client().set("k", "v")
    storage = LocalStorage(tmp_path / "b")
    snapshot(source.url(), storage, partition="2026-11-24-13:00")
    snapshot(source.url(), storage, partition="2026-11-24-14:00")
    assert select_snapshot(storage, SERIES).data["dagster_partition"] == "2026-11-24-14:00"
    assert select_snapshot(storage, SERIES, "2026-11-24-1300").data["dagster_partition"] == "2026-11-24-13:00"
    with pytest.raises(BackupError, match="No snapshot for partition 2026-11-24-15:00.*newest are"):
        select_snapshot(storage, SERIES, "2026-11-24-15:00")
    with pytest.raises(BackupError, match="not an hourly partition key"):
        select_snapshot(storage, SERIES, "yesterday")


def test_rerun_of_a_partition_keeps_both_snapshots_and_the_newest_is_current(redis_server, tmp_path):
    source = redis_server()
    source.client().set("k", "v")
    storage = LocalStorage(tmp_path / "b")
    first = snapshot(source.url(), storage)
    second = snapshot(source.url(), storage)
    assert first.artifact_key != second.artifact_key
    assert read_manifest(storage, SERIES, "2026-11-24-1300").artifact_key == second.artifact_key
    data_objects = [k for k in stored_keys(storage) if "/manifest" not in k]
    assert sorted(data_objects) == sorted([first.artifact_key, second.artifact_key])  # nothing deleted by a re-run


# --------------------------------------------------------------------------------------------- drill


@pytest.mark.parametrize("mode", ["rdb", "logical"])
def test_drill_restores_newest_snapshot_and_stores_report(redis_server, tmp_path, mode):
    source = redis_server()
    populate_every_type(source.client(), source)
    storage = LocalStorage(tmp_path / "b")
    snapshot(source.url(), storage, mode=mode, partition="2026-11-24-12:00")
    newest = snapshot(source.url(), storage, mode=mode)
    report = run_redis_drill(storage, SERIES, source="cache", partition="2026-11-01", say=print)
    assert report["passed"], report["problems"]
    assert report["backup_partition"] == newest.data["dagster_partition"] and report["format"] == mode
    assert report["keys_restored"] == newest.data["contents"]["keys_per_db"]
    assert list((tmp_path / "b" / "drills" / "redis" / "cache" / "2026-11-01").glob("report-*.json"))


# ----------------------------------------------------------------------------------- persistence


def test_persistence_config_verdicts_on_real_servers(redis_server):
    bare = redis_server()  # save "" and appendonly no, like the machine's shared Redis
    verdict = persistence_config_verdict(read_persistence(RedisEndpoint.from_url(bare.url())))
    assert not verdict.passed and "AOF is off" in verdict.description and "no RDB save rules" in verdict.description
    good = redis_server(("appendonly yes", "appendfsync everysec", "save 900 1 300 10 60 10000"))
    verdict = persistence_config_verdict(read_persistence(RedisEndpoint.from_url(good.url())))
    assert verdict.passed, verdict.description
    lax = redis_server(("appendonly yes", "appendfsync no", "save 900 1"))
    verdict = persistence_config_verdict(read_persistence(RedisEndpoint.from_url(lax.url())))
    assert not verdict.passed and "appendfsync is 'no'" in verdict.description
    managed = redis_server(('rename-command CONFIG ""', "appendonly yes"))
    verdict = persistence_config_verdict(read_persistence(RedisEndpoint.from_url(managed.url())))
    assert not verdict.passed and "CONFIG GET is refused" in verdict.description


def test_failed_bgsave_is_seen_by_the_last_save_verdict(redis_server, tmp_path):
    server = redis_server(("enable-protected-configs yes",))  # lets the test move `dir` somewhere doomed
    client = server.client()
    client.set("k", "v")
    doomed = tmp_path / "doomed"
    doomed.mkdir()
    client.config_set("dir", str(doomed))
    shutil.rmtree(doomed)
    client.bgsave()
    for _ in range(500):  # wait for the child to fail (a readiness wait, not a timing assertion)
        info = client.info("persistence")
        if not info["rdb_bgsave_in_progress"] and info["rdb_last_bgsave_status"] == "err":
            break
        time.sleep(0.02)
    persistence = read_persistence(RedisEndpoint.from_url(server.url()))
    verdict = last_save_verdict(persistence.info, datetime.now(UTC))
    assert not verdict.passed and "BGSAVE failed" in verdict.description
    incident = persistence_incident(persistence.info, datetime.now(UTC))
    assert incident and incident[0].startswith("bgsave-failed-")


def test_a_server_that_never_saved_fails_last_save_whatever_lastsave_says(redis_server):
    """LASTSAVE is the start time until the first save, so a fresh `save ""` server looked "saved 0 min ago"."""
    server = redis_server()  # save "" and appendonly no: nothing ever writes these keys to disk
    client = server.client()
    client.mset({f"k{i}": i for i in range(25)})
    persistence = read_persistence(RedisEndpoint.from_url(server.url()))
    assert persistence.info["rdb_saves"] == 0 and persistence.info["uptime_in_seconds"] < 3600
    verdict = last_save_verdict(persistence.info, datetime.now(UTC))
    assert not verdict.passed
    assert "never completed an RDB save" in verdict.description and "25 changes" in verdict.description
    assert "BGSAVE" in verdict.description and "appendonly yes" in verdict.description  # how to fix
    assert verdict.metadata["never_saved"] is True
    incident = persistence_incident(persistence.info, datetime.now(UTC))
    assert incident and incident[0] == f"never-saved-{persistence.info['rdb_last_save_time']}"

    client.bgsave()
    for _ in range(500):  # wait for the child to finish (a readiness wait, not a timing assertion)
        info = client.info("persistence")
        if not info["rdb_bgsave_in_progress"] and info["rdb_saves"]:
            break
        time.sleep(0.02)
    persistence = read_persistence(RedisEndpoint.from_url(server.url()))
    verdict = last_save_verdict(persistence.info, datetime.now(UTC))
    assert verdict.passed, verdict.description
    assert persistence_incident(persistence.info, datetime.now(UTC)) is None
    client.set("after", "save")  # changes after a real save are the save rules' business, as before
    assert last_save_verdict(read_persistence(RedisEndpoint.from_url(server.url())).info, datetime.now(UTC)).passed


def test_never_saved_without_rdb_saves_is_told_by_the_uptime():
    """Redis < 7 has no rdb_saves: LASTSAVE equal to the start time (now - uptime) means it never saved."""
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    t = int(now.timestamp())
    fresh = {"rdb_last_save_time": t - 40, "uptime_in_seconds": 41, "rdb_changes_since_last_save": 9000}
    verdict = last_save_verdict(dict(fresh, rdb_last_bgsave_status="ok"), now)
    assert not verdict.passed and verdict.metadata["never_saved"]
    assert "started 0.7 min ago" in verdict.description and "9,000 changes" in verdict.description
    saved_since = dict(fresh, rdb_last_save_time=t - 10)
    assert last_save_verdict(saved_since, now).passed
    idle = dict(fresh, rdb_changes_since_last_save=0)  # nothing written since start: its RDB on disk is current
    assert last_save_verdict(idle, now).passed
    assert last_save_verdict(dict(fresh, rdb_saves=3), now).passed  # rdb_saves, when there, is the authority


def test_last_save_rules():
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    t = int(now.timestamp())
    ok = {"rdb_last_save_time": t - 600, "rdb_changes_since_last_save": 5, "rdb_last_bgsave_status": "ok"}
    assert last_save_verdict(ok, now).passed and persistence_incident(ok, now) is None
    stale = dict(ok, rdb_last_save_time=t - 3700)
    assert not last_save_verdict(stale, now).passed
    assert persistence_incident(stale, now)[0] == f"save-too-old-{t - 3700}"
    # the same incident keeps its id while it lasts: one incident, one run
    assert persistence_incident(stale, datetime.fromtimestamp(t + 900, UTC))[0] == f"save-too-old-{t - 3700}"
    idle = dict(stale, rdb_changes_since_last_save=0)
    assert last_save_verdict(idle, now).passed
    verdict = persistence_config_verdict(Persistence({"aof_enabled": 1}, {"appendfsync": "always", "save": "60 1"}))
    assert verdict.passed


def test_rdb_checksum_disabled_is_reported_not_failed(redis_server, tmp_path):
    source = redis_server(("rdbchecksum no",))
    source.client().set("k", "v")
    storage = LocalStorage(tmp_path / "b")
    manifest = snapshot(source.url(), storage, mode="rdb")
    assert manifest.data["contents"]["crc64_verified"] is False
    assert verify_redis_artifact(storage, manifest).ok


def test_numpy_crc_speed_is_sane():
    """Not a timing assertion: just that the lane path is exercised on a multi-MiB buffer and agrees."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    c = Crc64()
    for i in range(0, len(data), 1 << 20):
        c.update(data[i : i + (1 << 20)])
    assert c.value == crc64(data)


# ------------------------------------------------------------------------------- no value in any message

SECRET = b"session-token-SECRET123"


def _dump(server, value: bytes = SECRET) -> bytes:
    client = server.client()
    client.set("tmp", value)
    payload = client.dump("tmp")
    client.delete("tmp")
    return payload


class _Target:
    """The two things copy_records and the drill's replay need of a target: client(db) and display()."""

    def __init__(self, server):
        self.server = server

    def client(self, db: int = 0):
        return self.server.client(db)

    def display(self) -> str:
        return self.server.name


def test_damaged_payload_is_refused_by_key_and_reason_without_the_value(redis_server):
    target = redis_server()
    payload = bytearray(_dump(target))
    payload[-1] ^= 0xFF  # the CRC64 no longer matches: the server refuses the RESTORE
    long_key = b"session:" + b"\x00\xffk" * 60
    with pytest.raises(BackupError) as caught:
        copy_records(iter([(0, [(long_key, 0, bytes(payload))])]), _Target(target), absolute=False, say=print)
    message = str(caught.value)
    assert "DUMP payload version or checksum are wrong" in message and "Fix:" in message
    assert "key 'session:\\x00\\xffk" in message and f"({len(long_key):,} bytes)" in message
    assert b"SECRET123" not in message.encode() and "SECRET123" not in repr(caught.value)
    assert target.client().dbsize() == 0


def test_drill_replay_into_a_server_without_restore_names_the_key_not_the_value(redis_server, tmp_path):
    server = redis_server(('rename-command RESTORE ""',))
    snapshot_file = tmp_path / "snapshot.resp"
    payload = _dump(redis_server())
    commands = [[b"SELECT", b"0"], [b"RESTORE", b"session:alice", b"0", payload]]
    snapshot_file.write_bytes(b"".join(_resp(args) for args in commands))
    with pytest.raises(BackupError) as caught:
        _copy_into_throwaway(snapshot_file, _Target(server))
    message = str(caught.value)
    assert "key 'session:alice'" in message and "unknown command" in message and "arguments not shown" in message
    assert "SECRET123" not in message


def test_malformed_logical_snapshot_is_reported_without_its_bytes(tmp_path):
    snapshot_file = tmp_path / "snapshot.resp"
    good = _resp([b"RESTORE", b"session:alice", b"0", b"\x00\x17" + SECRET])
    for broken in (SECRET + b"\r\n", b"*4\r\n$7\r\nRESTORE\r\n$3\r\nkey\r\n$9\r\n" + SECRET[:9] + b"\r\n$1\r\nx\r\n"):
        snapshot_file.write_bytes(good + broken)
        with pytest.raises(BackupError) as caught:
            list(_records_from_logical(snapshot_file, 10))
        message = str(caught.value)
        assert "malformed at command 2" in message and "after key 'session:alice'" in message, message
        assert "SECRET" not in message and "session-token" not in message, message


def _resp(args: list[bytes]) -> bytes:
    return f"*{len(args)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
