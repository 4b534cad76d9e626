"""Shared fixtures: real PostgreSQL databases, a real moto S3 server process, both storage backends.

Nothing here mocks the thing under test: databases are created on the machine's PostgreSQL and
dropped afterwards, and S3 is spoken to over HTTP with a normal boto3 client.
"""

from __future__ import annotations

import os as _os

# Transient-failure retries wait seconds in tests, not minutes (read when the definitions are imported).
_os.environ.setdefault("BACKUP_RETRY_DELAY_S", "0.2")
# Most tests back up fixed dates (2026-11-24, ...) to test other behaviour; the late-partition guard would refuse
# them as the calendar moves on. test_late_partitions.py removes this and tests the real defaults.
_os.environ.setdefault("BACKUP_LATE_GRACE_HOURS", "daily=876000,weekly=876000,hourly=876000")

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import boto3
import psycopg
import pytest
from botocore.config import Config
from psycopg import sql

from cidadao_backup_dagster.core.artifacts.storage import LocalStorage, MiB, S3Storage

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MOTO_ACCESS_KEY = "testing"
MOTO_SECRET_KEY = "testing"
MOTO_REGION = "us-east-1"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def url_with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def url_with_password(url: str, password: str) -> str:
    """`postgresql://user@host/db` -> `postgresql://user:password@host/db` (trust auth ignores it)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def drop_database(admin_url: str, dbname: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


# ------------------------------------------------------------------------------------------ postgres


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return os.environ.get("TEST_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL)


@pytest.fixture
def make_database(pg_admin_url):
    """Factory: `make_database(prefix="cbd")` creates `<prefix>_test_<uuid8>` and returns its URL.
    Every database it made is dropped at teardown (connections terminated first), also on failure."""
    created: list[str] = []

    def make(prefix: str = "cbd") -> str:
        name = unique_name(f"{prefix}_test")
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return url_with_dbname(pg_admin_url, name)

    yield make
    errors = []
    for name in reversed(created):
        try:
            drop_database(pg_admin_url, name)
        except psycopg.Error as exc:  # keep dropping the others, then report
            errors.append(f"{name}: {exc}")
    assert not errors, f"could not drop test databases: {errors}"


@pytest.fixture
def drop_later(pg_admin_url):
    """Names of databases a test expects a job to create; dropped at teardown whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        drop_database(pg_admin_url, name)


# ---------------------------------------------------------------------------------------------- S3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def refused_port():
    """A TCP port on 127.0.0.1 that refuses connections: bound for the test's duration, never listening
    (so nothing else can take it meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _moto_answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


class MotoServer:
    """A moto S3 server in its own process (so it does not share the GIL with the code under test)."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        for _attempt in range(3):  # the free port can be taken between probing and binding
            port = free_port()
            self.endpoint = f"http://127.0.0.1:{port}"
            self._log = open(log_path, "ab")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            deadline = time.monotonic() + 60  # a readiness wait, not a timing assertion
            while self.proc.poll() is None and time.monotonic() < deadline:
                if _moto_answers(self.endpoint):
                    return
                time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"moto server did not start; log:\n{log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """Starts a moto S3 server subprocess on a free port; returns `http://127.0.0.1:<port>`.
    Sets no environment variables; the process is killed at session end."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server.endpoint
    finally:
        server.stop()


def make_s3_client(endpoint: str, *, max_attempts: int = 3):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=MOTO_REGION,
        aws_access_key_id=MOTO_ACCESS_KEY,
        aws_secret_access_key=MOTO_SECRET_KEY,
        config=Config(retries={"mode": "standard", "max_attempts": max_attempts}, s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="session")
def s3_client(moto_endpoint):
    return make_s3_client(moto_endpoint)


@pytest.fixture
def aws_env(monkeypatch, moto_endpoint):
    """Point the standard AWS variables at the moto server (for code that builds its own client)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", MOTO_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MOTO_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", MOTO_REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {
        "AWS_ACCESS_KEY_ID": MOTO_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": MOTO_SECRET_KEY,
        "AWS_DEFAULT_REGION": MOTO_REGION,
        "AWS_ENDPOINT_URL": moto_endpoint,
    }


def empty_and_delete_bucket(client, bucket: str) -> None:
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def make_bucket(s3_client):
    """Factory: `make_bucket(prefix="cbd")` creates a uniquely named bucket and returns its name."""
    made: list[str] = []

    def make(prefix: str = "cbd") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}".lower()
        s3_client.create_bucket(Bucket=name)
        made.append(name)
        return name

    yield make
    for name in made:
        empty_and_delete_bucket(s3_client, name)


# ------------------------------------------------------------------------------------------ storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """The same Storage interface over both backends: a local folder, or an S3 bucket (prefix `backups`,
    5 MiB parts) on the moto server. S3 fixtures are only started for the s3 variant."""
    if request.param == "local":
        return LocalStorage(tmp_path / "backups")
    client = request.getfixturevalue("s3_client")
    bucket = request.getfixturevalue("make_bucket")()
    return S3Storage(client, bucket, prefix="backups", part_size=5 * MiB)


# ------------------------------------------------------------------------------------ storage layout


def manifest_paths(folder: Path) -> list[Path]:
    """A partition folder's manifests (one per run that published), oldest written first."""
    from cidadao_backup_dagster.core.artifacts.layout import MANIFEST_NAME, is_manifest_name

    return sorted((p for p in Path(folder).iterdir() if is_manifest_name(p.name)),
                  key=lambda p: (p.name != MANIFEST_NAME, p.name))  # fmt: skip


def newest_manifest_path(folder: Path) -> Path:
    """The partition's current manifest (the newest run's)."""
    paths = manifest_paths(folder)
    assert paths, f"no manifest in {folder}"
    return paths[-1]

