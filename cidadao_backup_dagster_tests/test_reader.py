"""read_artifact, the loop integrity checks, restores and drills share: its stored half runs on a read-ahead
thread, so these tests hold it to what the single-threaded loop did: content problems come back in the outcome
(the stored SHA-256 read to the end), a storage error or a sink's error is raised as it was raised, the read
stops, and no thread stays behind. Real storages: a local folder and the moto S3 server (through a proxy that
cuts a GET's body short, for the storage error)."""

import hashlib
import io
import os
import random
import subprocess
import threading
import time
import urllib.request
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import BotoCoreError
from pyrage import x25519

from cidadao_backup_dagster.core.artifacts.crypto import encryption_stage
from cidadao_backup_dagster.core.artifacts.manifest import Manifest
from cidadao_backup_dagster.core.artifacts.pipeline import stream_to_writer
from cidadao_backup_dagster.core.artifacts.reader import read_artifact
from cidadao_backup_dagster.core.artifacts.storage import MiB, S3Storage
from cidadao_backup_dagster.core.errors import BackupError

from .conftest import make_s3_client
from .test_s3_faults import FaultyProxy

IDENTITY = x25519.Identity.generate()
SHA_MISMATCH = "SHA-256 of the stored object does not match the manifest"
TRUNCATED = "zstd stream ends before its frame is complete (truncated object)"


def text_payload(size: int) -> bytes:
    """Compressible like a dump (about 3:1), and different in every chunk."""
    rng = random.Random(7)
    words = [f"{w}{rng.randrange(10**6)}".encode() for w in ("cnpj", "contrato", "valor", "orgao", "id") * 2000]
    return b" ".join(rng.choices(words, k=size // 10))[:size]


def put_artifact(storage, key: str, payload: bytes, *, encrypted: bool = False) -> Manifest:
    """Stored the way backups store it (stream_to_writer: zstd, optionally age), with its manifest's artifact."""
    writer = storage.open_write(key)
    encryption = encryption_stage([IDENTITY.to_public()]) if encrypted else None
    stats = stream_to_writer(io.BytesIO(payload), writer, encryption=encryption)
    writer.commit()
    artifact = {
        "key": key,
        "stored_bytes": stats.stored_bytes,
        "stored_sha256": stats.stored_sha256,
        "raw_bytes": stats.raw_bytes,
        "raw_sha256": stats.raw_sha256,
        "encryption": {"format": "age", "recipients": ["age:test"]} if encrypted else None,
    }
    return Manifest({"partition": "2026-12-01", "artifact": artifact})


def our_threads() -> list[str]:
    """Threads the read could leave: its read-ahead and age's decryption."""
    return [t.name for t in threading.enumerate() if t.name in ("artifact-read", "age-decrypt")]


# ------------------------------------------------------------------------------------------ content problems


def damaged(data: bytes, damage: str) -> bytes:
    if damage == "truncated":
        return data[: len(data) // 2]
    if damage == "bit-flipped early":  # the decode fails early; the stored SHA-256 must still cover every byte
        flipped = bytearray(data)
        flipped[len(data) // 10] ^= 0x10
        return bytes(flipped)
    assert damage == "trailing bytes"
    return data + b"\x00" * 1000


EXPECTED = {  # what the single-threaded loop reported (main before the read-ahead thread)
    ("plain", "truncated"): [SHA_MISMATCH, TRUNCATED],
    ("plain", "bit-flipped early"): [SHA_MISMATCH, "zstd stream does not decode: "],
    ("plain", "trailing bytes"): [SHA_MISMATCH],  # zstd stops at its frame's end: the stored SHA-256 tells
    ("age", "truncated"): [SHA_MISMATCH, "Decryption failed: the artifact is truncated or was altered ("],
    ("age", "bit-flipped early"): [SHA_MISMATCH, "Decryption failed: the artifact is truncated or was altered ("],
    ("age", "trailing bytes"): [SHA_MISMATCH, "Decryption failed: the artifact is truncated or was altered ("],
}


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped early", "trailing bytes"])
@pytest.mark.parametrize("kind", ["plain", "age"])
def test_damage_gives_the_same_problems_and_the_whole_stored_sha256(storage, kind, damage):
    payload = text_payload(6 * MiB)
    manifest = put_artifact(storage, "a/obj", payload, encrypted=kind == "age")
    intact = read_artifact(storage, manifest, identities=[IDENTITY])
    assert intact.problems(manifest) == [] and intact.complete and intact.error is None
    assert (intact.raw_bytes, intact.raw_sha256) == (len(payload), hashlib.sha256(payload).hexdigest())

    data = damaged(storage.read_bytes("a/obj"), damage)
    storage.put_bytes("a/obj", data)
    received = bytearray()
    outcome = read_artifact(storage, manifest, received.extend, identities=[IDENTITY])
    problems = outcome.problems(manifest)
    expected = EXPECTED[(kind, damage)]
    assert len(problems) == len(expected) and all(map(str.startswith, problems, expected)), problems
    assert (outcome.stored_bytes, outcome.stored_sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert outcome.raw_bytes == len(received)  # (a flipped bit reaches the sink: the frame's checksum is at its end)
    if damage == "truncated":
        assert payload.startswith(received) and 0 < len(received) < len(payload)
    assert our_threads() == []


def test_a_wrong_identity_is_a_problem_not_an_error(storage):
    manifest = put_artifact(storage, "a/obj", text_payload(MiB), encrypted=True)
    outcome = read_artifact(storage, manifest, identities=[x25519.Identity.generate()])
    assert outcome.problems(manifest) == [
        "Decryption failed: the identity in BACKUP_AGE_IDENTITY_FILE is not one of this artifact's recipients "
        "(see the manifest's encryption.recipients)"
    ]
    assert outcome.stored_sha256 == manifest.stored_sha256 and our_threads() == []


# --------------------------------------------------------------------------------------- errors are raised


class CountingStorage:
    """The real storage; counts the stored bytes read and whether the reader was closed."""

    def __init__(self, storage):
        self.storage, self.read, self.closed = storage, 0, False

    def open_read(self, key):
        counter, body = self, self.storage.open_read(key)

        class Counted:
            def read(self, n=-1):
                data = body.read(n)
                counter.read += len(data)
                return data

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                body.close()
                counter.closed = True

        return Counted()


@pytest.mark.parametrize("kind", ["plain", "age"])
def test_a_sink_that_stops_reading_stops_the_read_and_its_error_is_raised(storage, kind):
    """pg_restore exiting early closes its stdin: the write's BrokenPipeError reaches the caller, the storage
    is read no further than the read-ahead, its reader (an S3 connection) is closed and no thread stays."""
    payload = os.urandom(24 * MiB)  # incompressible: stored bytes follow raw bytes one to one
    manifest = put_artifact(storage, "a/obj", payload, encrypted=kind == "age")
    before = set(threading.enumerate())
    counting = CountingStorage(storage)
    head = subprocess.Popen(["head", "-c", "1000"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    def sink(data: bytes) -> None:
        time.sleep(0.3)  # busy with the first chunk: time enough for an unbounded read-ahead to read it all
        head.stdin.write(data)  # type: ignore[union-attr]

    try:
        with pytest.raises(BrokenPipeError) as err:  # (`err` keeps the frames alive: no cleanup by refcount)
            read_artifact(counting, manifest, sink, identities=[IDENTITY])  # type: ignore[arg-type]
    finally:
        try:
            head.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        head.wait()
    assert counting.closed and counting.read < 8 * MiB, counting.read  # not the 24 MiB
    assert set(threading.enumerate()) <= before, err.value


def cutting_proxy(upstream: str, after: int) -> FaultyProxy:
    """Passes requests to moto, but sends only the first `after` bytes of a GetObject's body (with the whole
    Content-Length) and then closes the connection: a storage that fails in the middle of a read."""
    proxy = FaultyProxy(upstream, fail_first=0)
    base = proxy.server.RequestHandlerClass

    class Handler(base):
        def do_GET(self):
            if urlsplit(self.path).path.strip("/").count("/") == 0:
                return self._handle()  # a bucket-level request
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            with urllib.request.urlopen(urllib.request.Request(upstream + self.path, headers=headers)) as resp:
                body = resp.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:after])
            self.wfile.flush()
            self.close_connection = True

    proxy.server.RequestHandlerClass = Handler
    return proxy


@pytest.mark.parametrize("kind", ["plain", "age"])
def test_a_storage_error_mid_read_is_raised_as_itself(moto_endpoint, make_bucket, s3_client, kind):
    """An S3 body cut short raises botocore's error from the read-ahead thread to the caller, not a content
    problem that would call a sound artifact damaged; the body is closed and no thread stays."""
    bucket = make_bucket()
    manifest = put_artifact(S3Storage(s3_client, bucket, "r"), "a/obj", os.urandom(12 * MiB), encrypted=kind == "age")
    with cutting_proxy(moto_endpoint, after=3 * MiB) as proxy:
        before = set(threading.enumerate())
        faulty = CountingStorage(S3Storage(make_s3_client(proxy.url), bucket, "r"))
        with pytest.raises(BotoCoreError) as err:
            read_artifact(faulty, manifest, identities=[IDENTITY])  # type: ignore[arg-type]
        assert not isinstance(err.value, BackupError)
        assert faulty.closed and faulty.read == 3 * MiB
        assert our_threads() == []
        assert [t for t in set(threading.enumerate()) - before if "process_request" not in t.name] == []
