"""S3 misbehaving for real: a small HTTP proxy in front of the moto server answers some requests with
503 SlowDown / 500 before passing the rest through. The client is built the production way
(dagster-aws S3Resource), so these tests prove the retry configuration, not a stand-in for it."""

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster_aws.s3 import S3Resource

from cidadao_backup_dagster.core.artifacts.storage import MiB, S3Storage
from cidadao_backup_dagster.core.errors import BackupError
from cidadao_backup_dagster.core.postgres.backup import BackupSettings, backup_postgres
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.postgres.verify import verify_pg_artifact

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultyProxy:
    """Forwards to `upstream`; fails the first `fail_first` UploadPart requests (or all, with -1)."""

    def __init__(self, upstream: str, fail_first: int, status: int = 503):
        self.upstream, self.fail_first, self.status = upstream, fail_first, status
        self.injected = 0
        self.part_requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _handle(self):
                body = self._read_body()
                if "partNumber=" in self.path and self.command == "PUT":
                    proxy.part_requests += 1
                    if proxy.fail_first < 0 or proxy.injected < proxy.fail_first:
                        proxy.injected += 1
                        self.send_response(proxy.status)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(SLOWDOWN)))
                        self.end_headers()
                        self.wfile.write(SLOWDOWN)
                        return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "transfer-encoding", "expect")
                }
                # urllib would label a body form-encoded, and moto's web framework would then eat it as a form
                headers.setdefault("Content-Type", "application/octet-stream")
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=body if body else None, method=self.command, headers=headers
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as resp:
                        status, payload, out_headers = resp.status, resp.read(), resp.headers.items()
                except urllib.error.HTTPError as err:
                    status, payload, out_headers = err.code, err.read(), err.headers.items()
                self.send_response(status)
                for k, v in out_headers:
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                # A HEAD answer has no body: its Content-Length is the object's size, passed through as is.
                upstream_length = dict((k.lower(), v) for k, v in out_headers).get("content-length", "0")
                self.send_header("Content-Length", upstream_length if self.command == "HEAD" else str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _read_body(self) -> bytes:
                if "chunked" not in self.headers.get("Transfer-Encoding", ""):
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return body

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def production_client(endpoint: str, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return S3Resource(endpoint_url=endpoint, region_name="us-east-1", max_attempts=10).get_client()


def test_slowdown_on_parts_is_retried_and_the_object_is_whole(moto_endpoint, make_bucket, s3_client, monkeypatch):
    bucket = make_bucket()
    payload = bytes(range(256)) * (12 * MiB // 256)  # three 5 MiB parts (the last one shorter)
    with FaultyProxy(moto_endpoint, fail_first=3) as proxy:
        storage = S3Storage(production_client(proxy.url, monkeypatch), bucket, "retry", part_size=5 * MiB)
        writer = storage.open_write("blob.bin")
        for i in range(0, len(payload), MiB):
            writer.write(payload[i : i + MiB])
        writer.commit()
    assert proxy.injected == 3 and proxy.part_requests == 3 + 3
    assert s3_client.get_object(Bucket=bucket, Key="retry/blob.bin")["Body"].read() == payload


def test_backup_fails_cleanly_when_storage_keeps_answering_5xx(
    moto_endpoint, make_bucket, s3_client, make_database, monkeypatch
):
    import psycopg

    url = make_database("cbd_s3fault")
    with psycopg.connect(url) as conn:  # ~20 MB raw, so the upload needs several 5 MiB parts
        conn.execute(
            "CREATE TABLE filler AS SELECT g, md5(g::text) || md5((g * 7)::text) AS v FROM generate_series(1, 250000) g"
        )
    bucket = make_bucket()
    conn = PgConnection.from_url(url)
    series = f"postgres/{conn.dbname}/daily"
    good = backup_postgres(
        conn, S3Storage(s3_client, bucket, "pg", part_size=5 * MiB), series=series, partition="2026-11-23"
    )
    # Shorten botocore's backoff sleeps (the retry decisions stay botocore's own), so the test takes seconds.
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, ctx: 0.01)
    with FaultyProxy(moto_endpoint, fail_first=-1, status=500) as proxy:
        storage = S3Storage(production_client(proxy.url, monkeypatch), bucket, "pg", part_size=5 * MiB)
        with pytest.raises(BackupError) as err:
            backup_postgres(conn, storage, series=series, partition="2026-11-24", settings=BackupSettings(zstd_level=1))
    assert "failed" in str(err.value) and "s3://" in str(err.value)
    assert proxy.injected >= 10  # every attempt of botocore's retry budget was used
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="pg/").get("Contents", [])]
    assert not [k for k in keys if "/2026-11-24/" in k], keys
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # the earlier backup is untouched and still verifies
    assert verify_pg_artifact(S3Storage(s3_client, bucket, "pg"), good).ok
