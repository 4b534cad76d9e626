"""The PostgreSQL backup core against a real server, on both storage backends.

Restores use stock tools only (`zstd -d`, `pg_restore`), so a backup is proven readable without
this project. Failures must leave no data object and no manifest, and an earlier good backup of
the same partition must still verify.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import zstandard
from botocore.exceptions import EndpointConnectionError

from cidadao_backup_dagster.core.artifacts.manifest import (
    Manifest,
    all_valid_manifests,
    is_present,
    iso,
    read_manifest,
    valid_manifests,
    write_manifest,
)
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage, MiB, S3Storage, Storage
from cidadao_backup_dagster.core.errors import BackupError, ConfigurationError
from cidadao_backup_dagster.core.monitoring.health import freshness_verdict, size_verdict
from cidadao_backup_dagster.core.postgres.backup import BackupSettings, backup_postgres
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.postgres.restore import restore_backup
from cidadao_backup_dagster.core.postgres.verify import verify_pg_artifact

from .conftest import MotoServer, make_s3_client, unique_name, url_with_dbname, url_with_password
from .pg_schema import compare_databases, create_object_kinds, table_row_counts

SERIES = "postgres/cidadao/daily"
PARTITION = "2024-05-01"
SECRET = "N0t-Sh0wn-Pa55word"  # trust auth accepts any password; it must never be printed or stored


def conn_for(url: str) -> PgConnection:
    return PgConnection.from_url(url_with_password(url, SECRET))


def fetch_object(storage: Storage, key: str, dest: Path) -> Path:
    """The stored bytes as a local file, fetched the way an operator would (no project code for S3)."""
    if isinstance(storage, LocalStorage):
        return storage.root / key
    storage.client.download_file(storage.bucket, f"{storage.prefix}/{key}", str(dest))
    return dest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def restore_with_stock_tools(archive_zst: Path, target_url: str, workdir: Path) -> Path:
    dump = workdir / "restore.dump"
    subprocess.run(["zstd", "-d", "-q", "-f", str(archive_zst), "-o", str(dump)], check=True)
    result = subprocess.run(
        ["pg_restore", "--no-owner", "--exit-on-error", "--dbname", target_url, str(dump)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return dump


def in_progress_uploads(storage: Storage) -> list[str]:
    if not isinstance(storage, S3Storage):
        return []
    return [u["Key"] for u in storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])]


def hidden_partials(storage: Storage) -> list[str]:
    if not isinstance(storage, LocalStorage) or not storage.root.exists():
        return []
    return [p.name for p in storage.root.rglob("*") if ".partial-" in p.name]


def assert_only(storage: Storage, good: Manifest) -> None:
    """The series holds exactly the good backup (object + its own manifest), which still verifies; nothing
    is half-written (no open multipart upload, no partial file)."""
    assert storage.list_keys(f"{SERIES}/") == sorted([good.artifact_key, good.key])
    assert read_manifest(storage, SERIES, good.partition) == good
    result = verify_pg_artifact(storage, good)
    assert result.ok, result.problems
    assert in_progress_uploads(storage) == []
    assert hidden_partials(storage) == []


@pytest.fixture
def source_url(make_database):
    url = make_database()
    create_object_kinds(url)
    return url


# -------------------------------------------------------------------------------------- round trip


def test_backup_restores_with_stock_tools_to_an_identical_database(storage, source_url, make_database, tmp_path):
    manifest = backup_postgres(
        conn_for(source_url), storage, series=SERIES, partition=PARTITION, extra={"run_id": "run-1"}
    )

    # layout: exactly one data object and its manifest, the manifest readable back as written
    key = manifest.artifact_key
    assert storage.list_keys(f"{SERIES}/") == sorted([key, manifest.key])
    assert manifest.key.startswith(f"{SERIES}/{PARTITION}/manifest-")
    assert key.startswith(f"{SERIES}/{PARTITION}/") and key.endswith(".dump.zst")
    assert read_manifest(storage, SERIES, PARTITION) == manifest
    assert valid_manifests(storage, SERIES) == [manifest]

    # the manifest's counts are the source's counts, table by table
    counts = table_row_counts(source_url)
    assert manifest.tables == counts
    assert manifest.data["contents"]["rows_total"] == sum(counts.values()) > 1000
    assert manifest.data["run"] == {"run_id": "run-1"}
    assert manifest.data["source"]["url"] == source_url  # user@host:port/db, no password

    # the password is nowhere: not in the manifest, not in any stored byte
    for key in storage.list_keys(""):
        assert SECRET.encode() not in storage.read_bytes(key), key

    result = verify_pg_artifact(storage, manifest)
    assert result.ok, result.problems
    assert result.details["toc_table_data_entries"] >= len(counts)

    # stock tools: the stored bytes match the manifest, decompress with zstd, restore with pg_restore
    stored = fetch_object(storage, manifest.artifact_key, tmp_path / "download.dump.zst")
    assert stored.stat().st_size == manifest.stored_bytes
    assert sha256_file(stored) == manifest.stored_sha256
    target_url = make_database("cbd_restore")
    dump = restore_with_stock_tools(stored, target_url, tmp_path)
    assert dump.stat().st_size == manifest.raw_bytes
    assert sha256_file(dump) == manifest.raw_sha256

    # one zstd frame and nothing after it (readers that stop at the first frame see everything)
    dobj = zstandard.ZstdDecompressor().decompressobj()
    dobj.decompress(stored.read_bytes())
    assert dobj.eof and dobj.unused_data == b""

    assert compare_databases(source_url, target_url) == []

    # ...and the comparison is able to see a difference in data, large objects and sequences
    with psycopg.connect(target_url, autocommit=True) as conn:
        conn.execute("""UPDATE "MixedCase"."Table" SET "Value With Space" = 'changed' WHERE "Id" = 1""")
        conn.execute("SELECT lo_unlink(content) FROM app.documents WHERE name = 'binary'")
        conn.execute("SELECT nextval('app.never_used')")
    differences = compare_databases(source_url, target_url)
    assert [d.split(":")[0].split(" ")[0] for d in differences] == ["large", "rows", "sequence"], differences
    assert any('"MixedCase"."Table"' in d for d in differences)


def test_rerun_of_a_partition_keeps_both_backups_and_both_restore(storage, make_database, pg_admin_url, drop_later):
    """Issue 11, finding 1: back up P (100 rows), DELETE 50, back up P again. The earlier dump used to be
    deleted before the new one was even checked; now both stay, both verify and both restore."""
    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g")
    first = backup_postgres(conn_for(url), storage, series=SERIES, partition=PARTITION)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM t WHERE id > 50")
    second = backup_postgres(conn_for(url), storage, series=SERIES, partition=PARTITION)

    # even within the same second, the new object and manifest get their own keys: nothing is overwritten
    assert second.artifact_key != first.artifact_key and second.key != first.key
    assert storage.list_keys(f"{SERIES}/") == sorted([first.artifact_key, first.key, second.artifact_key, second.key])
    assert read_manifest(storage, SERIES, PARTITION) == second  # the partition's current backup is the newest
    assert [m.tables for m in all_valid_manifests(storage, SERIES)] == [{"public.t": 100}, {"public.t": 50}]
    server = conn_for(pg_admin_url)
    for manifest, rows in ((first, 100), (second, 50)):
        assert verify_pg_artifact(storage, manifest).ok
        target = unique_name("cbd_rerun")
        drop_later.append(target)
        result = restore_backup(storage, manifest, server, target)
        assert result.ok and result.rows == rows


# ---------------------------------------------------------------------------------------- failures


@pytest.fixture
def good_backup(storage, source_url):
    """An earlier, valid backup of the partition the failing runs then target."""
    manifest = backup_postgres(conn_for(source_url), storage, series=SERIES, partition=PARTITION)
    assert_only(storage, manifest)
    return manifest


def test_pg_dump_dying_midway_leaves_nothing_and_keeps_the_earlier_backup(
    storage, source_url, good_backup, pg_admin_url
):
    # ~40 MB of hex text: enough that pg_dump is still streaming when its backend is terminated
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(
            "CREATE UNLOGGED TABLE big AS SELECT g AS id, md5(g::text) || md5(g || 'b') || md5(g || 'c') "
            "|| md5(g || 'd') || md5(g || 'e') || md5(g || 'f') || md5(g || 'g') || md5(g || 'h') AS payload "
            "FROM generate_series(1, 160000) g"
        )
    dbname = PgConnection.from_url(source_url).dbname
    terminated: list[tuple] = []

    def kill_pg_dump_backend(progress):
        # Runs in the streaming loop, so pg_dump is blocked writing into our pipe: mid-dump for certain.
        # Wait until more than one part's worth was handed to storage (an S3 multipart upload is open).
        if terminated or progress.stored_bytes <= 5 * MiB:
            return
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pid, state FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = %s",
                (dbname,),
            ).fetchall()
            assert [state for _, state in rows] == ["active"], rows  # COPY still running
            ok = admin.execute("SELECT pg_terminate_backend(%s, 10000)", (rows[0][0],)).fetchone()[0]
            assert ok
        terminated.append((progress.raw_bytes, in_progress_uploads(storage), hidden_partials(storage)))

    with pytest.raises(BackupError) as info:
        backup_postgres(
            conn_for(source_url),
            storage,
            series=SERIES,
            partition=PARTITION,
            settings=BackupSettings(zstd_threads=0, progress_every=0),  # report after every 1 MiB read
            on_progress=kill_pg_dump_backend,
        )
    text = str(info.value)
    assert text.startswith("pg_dump failed (exit code 1): pg_dump: error:"), text
    # pg_dump's own words: which table it was dumping and that the server connection went away
    assert 'Dumping the contents of table "big" failed' in text
    assert "administrator command" in text or "server closed the connection" in text
    assert SECRET not in text

    ((raw_at_kill, uploads_at_kill, partials_at_kill),) = terminated
    assert raw_at_kill < 30 * MiB  # well before the ~40 MB dump could have ended
    if isinstance(storage, S3Storage):
        assert len(uploads_at_kill) == 1  # a multipart upload was open, and the failure aborted it
    else:
        assert len(partials_at_kill) == 1  # a partial file existed, and the failure removed it
    assert_only(storage, good_backup)


def test_unreachable_storage_fails_before_dumping(storage, source_url, good_backup, tmp_path, refused_port):
    if isinstance(storage, LocalStorage):
        (tmp_path / "a-file").write_bytes(b"")
        broken: Storage = LocalStorage(tmp_path / "a-file" / "backups")  # cannot be created, even as root
        fix = "BACKUP_STORAGE_URL"
    else:
        client = make_s3_client(f"http://127.0.0.1:{refused_port}", max_attempts=2)
        broken = S3Storage(client, storage.bucket, prefix="backups")
        fix = "AWS_ENDPOINT_URL"
    with pytest.raises(BackupError) as info:
        backup_postgres(conn_for(source_url), broken, series=SERIES, partition=PARTITION)
    assert fix in str(info.value) and "Fix:" in str(info.value)
    assert SECRET not in str(info.value)
    assert_only(storage, good_backup)


def test_storage_lost_midway_aborts_and_writes_no_manifest(source_url, tmp_path):
    """A second moto server, stopped while parts are being uploaded."""
    server = MotoServer(tmp_path / "moto-doomed.log")
    try:
        client = make_s3_client(server.endpoint, max_attempts=2)
        client.create_bucket(Bucket="doomed")
        storage = S3Storage(client, "doomed", prefix="backups", part_size=5 * MiB)
        with psycopg.connect(source_url, autocommit=True) as conn:
            conn.execute(
                "CREATE UNLOGGED TABLE big AS SELECT g AS id, md5(g::text) || md5(g || 'b') || md5(g || 'c') "
                "|| md5(g || 'd') AS payload FROM generate_series(1, 160000) g"
            )
        stopped = []

        def stop_storage(progress):
            if not stopped and progress.stored_bytes > 5 * MiB:
                assert in_progress_uploads(storage)  # the first part is on its way
                server.stop()
                stopped.append(progress.raw_bytes)

        with pytest.raises((BackupError, EndpointConnectionError)) as info:
            backup_postgres(
                conn_for(source_url),
                storage,
                series=SERIES,
                partition=PARTITION,
                settings=BackupSettings(zstd_threads=0, progress_every=0),
                on_progress=stop_storage,
            )
        assert stopped
        assert "Could not connect to the endpoint URL" in str(info.value)
        assert SECRET not in str(info.value)
    finally:
        server.stop()
    # no pg_dump left behind, streaming into nothing
    leftover = subprocess.run(
        ["pgrep", "-f", f"pg_dump.*{PgConnection.from_url(source_url).dbname}"], capture_output=True, text=True
    )
    assert leftover.stdout.strip() == ""


@pytest.mark.parametrize("case", ["missing database", "missing role", "refused port"])
def test_unreachable_database_fails_clearly_and_keeps_the_earlier_backup(
    storage, source_url, good_backup, refused_port, case
):
    if case == "missing database":
        url = url_with_dbname(source_url, "cbd_test_does_not_exist")
        expected = 'database "cbd_test_does_not_exist" does not exist'
    elif case == "missing role":
        url = source_url.replace("postgresql://postgres@", "postgresql://cbd_no_such_role@")
        expected = 'role "cbd_no_such_role" does not exist'
    else:
        url = source_url.replace(":5432/", f":{refused_port}/")
        expected = "Connection refused"
    with pytest.raises(BackupError) as info:
        backup_postgres(conn_for(url), storage, series=SERIES, partition=PARTITION)
    text = str(info.value)
    assert text.startswith(f"Cannot connect to {PgConnection.from_url(url).display()}: "), text
    assert expected in text and "Fix: check DATABASE_URL" in text
    assert SECRET not in text and SECRET not in repr(info.value)
    assert_only(storage, good_backup)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "DATABASE_URL: is not set"),
        (f"mysql://postgres:{SECRET}@127.0.0.1:5432/db", "is not a PostgreSQL URL"),
        (f"postgresql://postgres:{SECRET}@127.0.0.1:5432/", "names no database"),
        (f"postgresql://postgres:{SECRET}@127.0.0.1:notaport/db", "port 'notaport' is not a single port"),
        (f"postgresql://postgres:{SECRET}@h1:5432,h2:5433/db", "port '5432,5433' is not a single port"),
        (f"postgresql://postgres:{SECRET}@[::1/db", "cannot be parsed"),
    ],
)
def test_bad_database_url_names_the_variable_and_hides_the_password(url, expected):
    with pytest.raises(ConfigurationError) as info:
        PgConnection.from_url(url, variable="DATABASE_URL")
    assert info.value.variable == "DATABASE_URL"
    assert expected in str(info.value) and "Fix: " in str(info.value)
    assert SECRET not in str(info.value)


# ------------------------------------------------------------------------------ verify detects damage


def rewrite_object(storage: Storage, key: str, data: bytes) -> None:
    storage.put_bytes(key, data)


def consistent_manifest(storage: Storage, manifest: Manifest, data: bytes) -> Manifest:
    """A manifest that agrees with the damaged bytes' size and SHA-256: only the deep checks can object."""
    doc = json.loads(manifest.to_json())
    doc["artifact"]["stored_bytes"] = len(data)
    doc["artifact"]["stored_sha256"] = hashlib.sha256(data).hexdigest()
    damaged = Manifest(doc)
    write_manifest(storage, SERIES, damaged)
    return damaged


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_verify_detects_damage(storage, source_url, damage):
    manifest = backup_postgres(conn_for(source_url), storage, series=SERIES, partition=PARTITION)
    assert verify_pg_artifact(storage, manifest).ok
    original = storage.read_bytes(manifest.artifact_key)
    if damage == "truncated":
        data = original[: len(original) // 2]
    else:
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x10
        data = bytes(flipped)
    rewrite_object(storage, manifest.artifact_key, data)

    problems = verify_pg_artifact(storage, manifest).problems
    assert "SHA-256 of the stored object does not match the manifest" in problems
    if damage == "truncated":
        assert f"object holds {len(data)} bytes, the manifest says {manifest.stored_bytes}" in problems
        assert "zstd stream ends before its frame is complete (truncated object)" in problems
        assert valid_manifests(storage, SERIES) == []  # the cheap presence check already rejects it
    else:
        assert any(p.startswith("zstd stream does not decode") for p in problems), problems
        assert valid_manifests(storage, SERIES) == [manifest]  # same size: only a deep verify can tell

    # even when the manifest agrees with the damaged bytes, decoding and the raw checksum still fail
    damaged = consistent_manifest(storage, manifest, data)
    assert is_present(storage, damaged)
    problems = verify_pg_artifact(storage, damaged).problems
    assert problems and "SHA-256 of the stored object does not match the manifest" not in problems
    if damage == "truncated":
        assert problems[0] == "zstd stream ends before its frame is complete (truncated object)"
        assert all(p.startswith("pg_restore --list cannot read the archive") for p in problems[1:]), problems
    else:
        assert any(p.startswith("zstd stream does not decode") for p in problems), problems


def test_verify_reports_a_missing_object(storage, source_url):
    manifest = backup_postgres(conn_for(source_url), storage, series=SERIES, partition=PARTITION)
    storage.delete(manifest.artifact_key)
    problems = verify_pg_artifact(storage, manifest).problems
    assert problems == [f"object {storage.uri(manifest.artifact_key)} is missing"]
    assert valid_manifests(storage, SERIES) == []


# --------------------------------------------------------------------------------------- health rules


def test_size_verdict():
    history = [1000, 1100, 900, 1050, 950]  # median 1000
    ok = size_verdict(1200, history)
    assert ok.passed and ok.metadata["median_bytes"] == 1000 and ok.metadata["deviation_pct"] == 20.0

    grown = size_verdict(1600, history)
    assert not grown.passed and "+60%" in grown.description and "median 1,000" in grown.description
    shrunk = size_verdict(400, history)
    assert not shrunk.passed and "-60%" in shrunk.description
    assert size_verdict(1500, history).passed  # exactly at the limit is still within it
    assert not size_verdict(1501, history).passed
    assert size_verdict(1300, history, max_deviation=0.2).passed is False

    first = size_verdict(5, [])
    assert first.passed and "No earlier valid backups" in first.description
    too_small = size_verdict(5, [], expected_min=100)
    assert not too_small.passed and "below the expected minimum 100" in too_small.description
    too_big = size_verdict(1000, history, expected_max=999)
    assert not too_big.passed and "above the expected maximum 999" in too_big.description

    zero = size_verdict(10, [0, 0, 0])  # an empty history median must not divide by zero
    assert not zero.passed


def crafted_manifest(partition: str, snapshot_at: datetime, stored_bytes: int = 1000) -> Manifest:
    return Manifest(
        {
            "partition": partition,
            "artifact": {"key": f"{SERIES}/{partition}/x.dump.zst", "stored_bytes": stored_bytes},
            "timings": {"snapshot_at": iso(snapshot_at)},
        }
    )


def test_freshness_verdict():
    now = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
    limit = timedelta(hours=26)

    none = freshness_verdict([], now, limit)
    assert not none.passed and "No valid backup" in none.description

    fresh = freshness_verdict([crafted_manifest("2024-05-09", now - timedelta(hours=10))], now, limit)
    assert fresh.passed and fresh.metadata["age_hours"] == 10.0
    assert fresh.metadata["newest_partition"] == "2024-05-09"

    stale = freshness_verdict([crafted_manifest("2024-05-08", now - timedelta(hours=30))], now, limit)
    assert not stale.passed and "30.0 h old, over the limit" in stale.description

    # backfilling an old partition just now must not make the series look fresh:
    # the newest PARTITION is judged, by its own snapshot time
    backfilled = [
        crafted_manifest("2024-04-01", now - timedelta(minutes=5)),
        crafted_manifest("2024-05-08", now - timedelta(hours=30)),
    ]
    verdict = freshness_verdict(backfilled, now, limit)
    assert not verdict.passed and verdict.metadata["newest_partition"] == "2024-05-08"
    assert verdict.metadata["valid_backups"] == 2

    # and a re-run of the newest partition does make it fresh again
    rerun = backfilled[:1] + [crafted_manifest("2024-05-08", now - timedelta(hours=1))]
    assert freshness_verdict(rerun, now, limit).passed
