"""Private storage: local backups, manifests and audit records are 0600 in 0700 folders whatever the umask
(a folder the operator made keeps its mode, with a warning), and every S3 object is written with the
configured server-side encryption: SSE-S3 by default, SSE-KMS with a key id, or none for services that do
not take the headers. S3 runs against the moto server process, a backup run through the Dagster job."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import dagster as dg
import pytest
from botocore.stub import Stubber

from cidadao_backup_dagster.core.artifacts.storage import LocalStorage, MiB, S3Storage, sse_arguments
from cidadao_backup_dagster.core.errors import ConfigurationError, PermanentError
from cidadao_backup_dagster.core.protection.audit import AuditRecord, write_audit
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.defs.resources import build_resources

from .conftest import MOTO_ACCESS_KEY, MOTO_REGION, MOTO_SECRET_KEY, make_s3_client

pytest_plugins = ["cidadao_backup_dagster_tests.redis_fixtures"]  # redis_server

PARTITION = "2026-11-24-13:00"


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """({file: mode}, {folder: mode}) of everything under `root`, the root itself among the folders."""
    files, folders = {}, {".": root.stat().st_mode & 0o777}
    for p in root.rglob("*"):
        (files if p.is_file() else folders)[p.relative_to(root).as_posix()] = p.stat().st_mode & 0o777
    return files, folders


# -------------------------------------------------------------------------------------------- local


def test_local_files_are_0600_and_new_folders_0700_whatever_the_umask(tmp_path):
    root = tmp_path / "not-yet" / "backups"
    with umask(0):
        (tmp_path / "umask-probe").write_bytes(b"")  # the umask really widens what is not made private
        storage = LocalStorage(root)
        storage.check_writable()
        storage.put_bytes("postgres/cidadao/daily/2026-11-24/manifest-1.json", b"{}")
        writer = storage.open_write("postgres/cidadao/daily/2026-11-24/data.dump.zst")  # several writes
        for _ in range(3):
            writer.write(random.Random(1).randbytes(MiB))
        writer.commit()
        left = storage.open_write("redis/cache/hourly/2026-11-24-1300/data.rdb.zst")  # abandoned: no trace
        left.write(b"x")
        left.abort()
        write_audit(storage, AuditRecord("backup", "ok", "file:///x"))
    assert (tmp_path / "umask-probe").stat().st_mode & 0o777 == 0o666
    files, folders = modes(root)
    assert len(files) == 3 and any(name.startswith("audit/") for name in files), files
    assert set(files.values()) == {0o600}, files
    assert {"audit", "postgres/cidadao/daily/2026-11-24", "redis/cache/hourly/2026-11-24-1300"} <= folders.keys()
    assert set(folders.values()) == {0o700}, folders  # the root too: this process made it
    assert (tmp_path / "not-yet").stat().st_mode & 0o777 == 0o777  # above the root: mkdir -p's default


def test_an_odd_umask_cannot_take_the_owners_own_bits_away(tmp_path):
    with umask(0o577):
        storage = LocalStorage(tmp_path / "backups")
        storage.put_bytes("a/b.json", b"{}")
    assert storage.read_bytes("a/b.json") == b"{}"
    files, folders = modes(tmp_path / "backups")
    assert set(files.values()) == {0o600} and set(folders.values()) == {0o700}


def test_a_folder_the_operator_made_keeps_its_mode_with_a_warning(tmp_path, caplog):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    caplog.set_level(logging.WARNING, logger="cidadao_backup_dagster.core.artifacts.storage")
    storage = LocalStorage(shared)
    storage.check_writable()
    storage.check_writable()  # once per folder and process
    (warning,) = [r.getMessage() for r in caplog.records if "group or others" in r.getMessage()]
    assert str(shared) in warning and "755" in warning and f"chmod 700 {shared}" in warning
    storage.put_bytes("postgres/x/manifest.json", b"{}")
    files, folders = modes(shared)
    assert folders.pop(".") == 0o755  # not changed
    assert set(folders.values()) == {0o700} and set(files.values()) == {0o600}

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    caplog.clear()
    LocalStorage(private).check_writable()
    assert not [r for r in caplog.records if "group or others" in r.getMessage()]


def test_a_backup_run_leaves_only_private_files_and_folders(redis_server, monkeypatch, tmp_path):
    for var in ("REDIS_SOURCE_NAME", "REDIS_SNAPSHOT_MODE", "BACKUP_AGE_RECIPIENTS", "CIDADAO_ENV"):
        monkeypatch.delenv(var, raising=False)
    server = redis_server()
    server.client().set("session:alice", "token")
    monkeypatch.setenv("REDIS_URL", server.url())
    root = tmp_path / "backups"
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{root}")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    with umask(0):
        result = (
            build_defs()
            .resolve_job_def("redis_snapshot_job")
            .execute_in_process(partition_key=PARTITION, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
        )
    assert result.success
    files, folders = modes(root)
    assert any(name.startswith("audit/") for name in files) and any("/manifest" in name for name in files), files
    assert any(name.endswith(".rdb.zst") for name in files), files
    assert set(files.values()) == {0o600}, files
    assert set(folders.values()) == {0o700}, folders


# ----------------------------------------------------------------------------------------------- S3


def kms_key(endpoint: str) -> str:
    """A new KMS key on the moto server; its id."""
    kms = boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name=MOTO_REGION,
        aws_access_key_id=MOTO_ACCESS_KEY,
        aws_secret_access_key=MOTO_SECRET_KEY,
    )
    return kms.create_key(Description="cidadao backups")["KeyMetadata"]["KeyId"]


def test_sse_settings_are_checked_naming_the_variable():
    assert sse_arguments() == {"ServerSideEncryption": "AES256"}
    assert sse_arguments("aes256") == {"ServerSideEncryption": "AES256"}
    assert sse_arguments("aws:kms") == {"ServerSideEncryption": "aws:kms"}  # the account's aws/s3 key
    assert sse_arguments("aws:kms", "alias/backups") == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/backups",
    }
    assert sse_arguments("OFF") == {}
    with pytest.raises(ConfigurationError, match=r"^BACKUP_S3_SSE: 'des' is not .*Fix: use AES256"):
        sse_arguments("des")
    with pytest.raises(ConfigurationError, match=r"^BACKUP_S3_SSE_KMS_KEY_ID: is set but BACKUP_S3_SSE is AES256"):
        sse_arguments("AES256", "alias/backups")
    with pytest.raises(ConfigurationError, match=r"^OFFSITE_S3_SSE_KMS_KEY_ID"):
        sse_arguments("off", "k", "OFFSITE_S3_SSE")


def _write_small_and_multipart(storage: S3Storage) -> tuple[str, str]:
    storage.put_bytes("small.json", b"{}")
    writer = storage.open_write("big.bin")
    writer.write(random.Random(2).randbytes(11 * MiB))  # three 5 MiB parts
    writer.commit()
    return storage._key("small.json"), storage._key("big.bin")


def test_s3_objects_are_sse_s3_by_default_small_and_multipart(s3_client, make_bucket):
    bucket = make_bucket()
    storage = S3Storage(s3_client, bucket, prefix="backups", part_size=5 * MiB)
    for key in _write_small_and_multipart(storage):
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256", (key, head)
    assert "PartsCount" in s3_client.head_object(Bucket=bucket, Key="backups/big.bin", PartNumber=1)


def test_s3_objects_are_sse_kms_with_the_configured_key(moto_endpoint, s3_client, make_bucket):
    key_id = kms_key(moto_endpoint)
    bucket = make_bucket()
    storage = S3Storage(s3_client, bucket, part_size=5 * MiB, sse="aws:kms", kms_key_id=key_id)
    for key in _write_small_and_multipart(storage):
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"], (key, head)
    assert storage.read_bytes("small.json") == b"{}"


def test_sse_off_sends_no_encryption_header(s3_client, make_bucket):
    bucket = make_bucket()
    client = make_s3_client(s3_client.meta.endpoint_url)  # its own client: the hook stays local to this test
    sent: list[tuple[str, dict]] = []
    client.meta.events.register(
        "provide-client-params.s3.*", lambda params, model, **_: sent.append((model.name, params))
    )
    for sse, expected in (("off", None), ("AES256", "AES256")):
        sent.clear()
        _write_small_and_multipart(S3Storage(client, bucket, prefix=sse, part_size=5 * MiB, sse=sse))
        writes = {name: params.get("ServerSideEncryption") for name, params in sent if name != "UploadPart"}
        assert writes == {"PutObject": expected, "CreateMultipartUpload": expected, "CompleteMultipartUpload": None}


def test_a_service_refusing_sse_headers_names_the_setting(s3_client):
    client = make_s3_client(s3_client.meta.endpoint_url)
    storage = S3Storage(client, "cbd-r2-like", part_size=5 * MiB)
    with Stubber(client) as stub:
        stub.add_client_error(
            "put_object",
            service_error_code="NotImplemented",
            service_message="Header 'x-amz-server-side-encryption' with value 'AES256' not implemented",
            http_status_code=501,
        )
        with pytest.raises(PermanentError) as caught:
            storage.put_bytes("manifest.json", b"{}")
    message = str(caught.value)
    assert (
        "BACKUP_S3_SSE=off" in message and "NotImplemented" in message and "s3://cbd-r2-like/manifest.json" in message
    )


def _encryption(name: str) -> dict:
    """The S3 encryption arguments of resource `name` as Dagster initializes it (EnvVars resolved)."""
    with dg.build_resources({name: build_resources()[name]}) as initialized:
        return getattr(initialized, name).open().encryption


def test_the_storage_resources_read_the_sse_variables(aws_env, make_bucket, monkeypatch, tmp_path):
    bucket = make_bucket()
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/daily")
    monkeypatch.setenv("OFFSITE_STORAGE_URL", f"s3://{bucket}/offsite")
    for var in ("BACKUP_S3_SSE", "BACKUP_S3_SSE_KMS_KEY_ID", "OFFSITE_S3_SSE", "OFFSITE_S3_SSE_KMS_KEY_ID"):
        monkeypatch.delenv(var, raising=False)
    assert _encryption("backup_storage") == {"ServerSideEncryption": "AES256"}  # the default
    assert _encryption("offsite_storage") == {"ServerSideEncryption": "AES256"}

    monkeypatch.setenv("BACKUP_S3_SSE", "aws:kms")
    monkeypatch.setenv("BACKUP_S3_SSE_KMS_KEY_ID", "alias/cidadao-backups")
    kms = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/cidadao-backups"}
    assert _encryption("backup_storage") == kms
    assert _encryption("offsite_storage") == kms  # follows BACKUP_S3_SSE unless told otherwise
    monkeypatch.setenv("OFFSITE_S3_SSE", "off")  # e.g. the offsite copy lives in R2
    assert _encryption("offsite_storage") == {} and _encryption("backup_storage") == kms

    monkeypatch.setenv("BACKUP_S3_SSE", "yes")
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/local")
    with pytest.raises(ConfigurationError, match="^BACKUP_S3_SSE: 'yes'"):  # checked whatever the URL
        _encryption("backup_storage")


def test_a_backup_job_to_s3_writes_every_object_with_sse_kms(
    redis_server, moto_endpoint, aws_env, s3_client, make_bucket, monkeypatch
):
    for var in ("REDIS_SOURCE_NAME", "REDIS_SNAPSHOT_MODE", "BACKUP_AGE_RECIPIENTS", "CIDADAO_ENV"):
        monkeypatch.delenv(var, raising=False)
    server = redis_server()
    server.client().set("session:alice", "token")
    monkeypatch.setenv("REDIS_URL", server.url())
    bucket = make_bucket()
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    key_id = kms_key(moto_endpoint)
    monkeypatch.setenv("BACKUP_S3_SSE", "aws:kms")
    monkeypatch.setenv("BACKUP_S3_SSE_KMS_KEY_ID", key_id)
    result = (
        build_defs()
        .resolve_job_def("redis_snapshot_job")
        .execute_in_process(partition_key=PARTITION, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    )
    assert result.success
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any("/audit/" in k for k in keys) and any("/manifest" in k for k in keys), keys
    for key in keys:
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"], (key, head)
