"""Storage backends, run identically against a local folder and an S3 bucket on a moto server process."""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cidadao_backup_dagster.core.artifacts.storage import LocalStorage, MiB, S3Storage, Storage, storage_from_url
from cidadao_backup_dagster.core.errors import BackupError, ConfigurationError

from .conftest import make_s3_client

PART = 5 * MiB  # the storage fixture's S3 part size


def payload(size: int, seed: int = 1) -> bytes:
    """Incompressible, reproducible bytes."""
    return random.Random(seed).randbytes(size)


def write_in_chunks(writer, data: bytes, chunk: int = 777_777) -> None:
    """Uneven chunks, so part boundaries never line up with the caller's writes."""
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        assert writer.write(view[start : start + chunk]) == len(view[start : start + chunk])


def files_on_disk(storage: LocalStorage) -> list[str]:
    """Everything under the root, including the hidden partial files list_keys deliberately skips."""
    if not storage.root.exists():
        return []
    return sorted(p.relative_to(storage.root).as_posix() for p in storage.root.rglob("*") if p.is_file())


def in_progress_uploads(storage: S3Storage) -> list[str]:
    resp = storage.client.list_multipart_uploads(Bucket=storage.bucket)
    return [u["Key"] for u in resp.get("Uploads", [])]


class PartRecorder:
    """Records the body length of every UploadPart call the client really sends (a botocore event hook)."""

    def __init__(self, client):
        self.client = client
        self.sizes: dict[int, int] = {}
        self.creates = 0

    def _on_upload_part(self, params, **_):
        self.sizes[params["PartNumber"]] = len(params["Body"])

    def _on_create(self, params, **_):
        self.creates += 1

    def __enter__(self):
        self.client.meta.events.register("provide-client-params.s3.UploadPart", self._on_upload_part)
        self.client.meta.events.register("provide-client-params.s3.CreateMultipartUpload", self._on_create)
        return self

    def __exit__(self, *exc):
        self.client.meta.events.unregister("provide-client-params.s3.UploadPart", self._on_upload_part)
        self.client.meta.events.unregister("provide-client-params.s3.CreateMultipartUpload", self._on_create)


# ---------------------------------------------------------------------------------------- both backends


def test_put_read_round_trip(storage: Storage):
    data = bytes(range(256)) * 100 + "ação ✓\n".encode()
    storage.put_bytes("series/2024-01-01/small.bin", data)
    assert storage.read_bytes("series/2024-01-01/small.bin") == data
    assert storage.size("series/2024-01-01/small.bin") == len(data)
    assert storage.list_keys("series/") == ["series/2024-01-01/small.bin"]
    assert storage.uri("series/2024-01-01/small.bin") == f"{storage.url}/series/2024-01-01/small.bin"

    storage.put_bytes("series/2024-01-01/small.bin", b"replaced")  # overwrite
    assert storage.read_bytes("series/2024-01-01/small.bin") == b"replaced"

    storage.put_bytes("series/empty", b"")
    assert storage.size("series/empty") == 0
    assert storage.read_bytes("series/empty") == b""


def test_streaming_write_of_several_parts_reads_back_equal(storage: Storage):
    data = payload(12 * MiB + 12_345)
    key = "pg/db/daily/2024-01-01/big.dump.zst"
    recorder = PartRecorder(storage.client) if isinstance(storage, S3Storage) else None
    if recorder:
        recorder.__enter__()
    try:
        writer = storage.open_write(key)
        write_in_chunks(writer, data)
        # nothing is visible under the key before commit
        assert storage.size(key) is None
        assert storage.list_keys("pg/") == []
        writer.commit()
    finally:
        if recorder:
            recorder.__exit__()

    assert storage.size(key) == len(data)
    with storage.open_read(key) as f:
        digest = hashlib.sha256()
        while chunk := f.read(MiB):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert storage.list_keys("pg/db/") == [key]

    if recorder:
        # equal-size parts (R2 rejects unequal non-trailing parts); only the last may be smaller
        assert recorder.creates == 1
        assert recorder.sizes == {1: PART, 2: PART, 3: len(data) - 2 * PART}
        head = storage.client.head_object(Bucket=storage.bucket, Key=f"backups/{key}")
        assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # a 3-part multipart object
        assert in_progress_uploads(storage) == []


def test_small_write_is_a_single_put(storage: Storage):
    recorder = PartRecorder(storage.client) if isinstance(storage, S3Storage) else None
    if recorder:
        recorder.__enter__()
    try:
        writer = storage.open_write("x/one.bin")
        write_in_chunks(writer, payload(PART - 1), chunk=100_000)
        writer.commit()
    finally:
        if recorder:
            recorder.__exit__()
    assert storage.read_bytes("x/one.bin") == payload(PART - 1)
    if recorder:
        assert recorder.creates == 0 and recorder.sizes == {}


def test_abort_leaves_no_object_and_keeps_the_previous_one(storage: Storage):
    key = "pg/db/daily/2024-01-01/data.bin"
    storage.put_bytes(key, b"the earlier good object")

    # a multipart-sized write over the same key, aborted
    writer = storage.open_write(key)
    write_in_chunks(writer, payload(12 * MiB, seed=2))
    if isinstance(storage, S3Storage):
        assert in_progress_uploads(storage) == [f"backups/{key}"]  # the abort below really has work to do
    else:
        assert len(files_on_disk(storage)) == 2  # the earlier object and the hidden partial file
    writer.abort()
    assert storage.read_bytes(key) == b"the earlier good object"

    # a fresh key, aborted both when large and when small
    for size in (11 * MiB, 1000):
        writer = storage.open_write(f"pg/db/daily/2024-01-02/new-{size}.bin")
        write_in_chunks(writer, payload(size, seed=3))
        writer.abort()
        assert storage.size(f"pg/db/daily/2024-01-02/new-{size}.bin") is None

    assert storage.list_keys("pg/") == [key]
    if isinstance(storage, S3Storage):
        assert in_progress_uploads(storage) == []
        listed = storage.client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])
        assert [o["Key"] for o in listed] == [f"backups/{key}"]
    else:
        assert files_on_disk(storage) == [key]


def test_list_keys_size_and_delete(storage: Storage):
    keys = ["a/b/1.bin", "a/b/2.bin", "a/c/3.bin", "ab/4.bin", "z.bin"]
    for i, key in enumerate(keys):
        storage.put_bytes(key, b"x" * (i + 1))
    assert storage.list_keys("a/b/") == ["a/b/1.bin", "a/b/2.bin"]
    assert storage.list_keys("a/") == ["a/b/1.bin", "a/b/2.bin", "a/c/3.bin"]
    assert storage.list_keys("") == sorted(keys)
    assert [storage.size(k) for k in keys] == [1, 2, 3, 4, 5]

    storage.delete("a/b/1.bin")
    assert storage.size("a/b/1.bin") is None
    assert storage.list_keys("a/b/") == ["a/b/2.bin"]
    storage.delete("a/b/1.bin")  # deleting twice is not an error
    assert storage.list_keys("") == sorted(set(keys) - {"a/b/1.bin"})


def test_missing_objects(storage: Storage):
    assert storage.size("nope/missing.bin") is None
    assert storage.list_keys("nope/") == []
    with pytest.raises(BackupError, match="missing.bin"):
        storage.open_read("nope/missing.bin")


def test_check_writable_passes_and_leaves_nothing(storage: Storage):
    storage.check_writable()
    assert storage.list_keys("") == []
    if isinstance(storage, LocalStorage):
        assert files_on_disk(storage) == []  # the write probe was removed


def test_s3_prefix_is_applied_in_the_bucket(s3_client, make_bucket):
    bucket = make_bucket()
    storage = S3Storage(s3_client, bucket, prefix="/backups/", part_size=PART)
    storage.put_bytes("k/v.bin", b"1")
    listed = s3_client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["backups/k/v.bin"]
    assert storage.uri("k/v.bin") == f"s3://{bucket}/backups/k/v.bin"
    assert storage.list_keys("k/") == ["k/v.bin"]


# --------------------------------------------------------------------------------- backend specifics


def test_local_keys_cannot_escape_the_root(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(BackupError, match="escapes the storage root"):
        storage.put_bytes("../outside.bin", b"x")
    assert not (tmp_path / "outside.bin").exists()


def test_local_unwritable_folder_names_the_fix(tmp_path):
    (tmp_path / "a-file").write_bytes(b"not a directory")
    storage = LocalStorage(tmp_path / "a-file" / "backups")  # root cannot be created, even as root
    with pytest.raises(BackupError) as info:
        storage.check_writable()
    assert "not writable" in str(info.value)
    assert "BACKUP_STORAGE_URL" in str(info.value)


_SYSCALL = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(\w+)\((.*)\)\s+=\s+(-?\d+)")
_FD_PATH = re.compile(r"^\d+<(.*)>")


@pytest.mark.skipif(not shutil.which("strace"), reason="strace is not installed (apt install strace)")
def test_local_renames_and_deletes_are_followed_by_a_directory_fsync(tmp_path):
    """A power loss must not undo a committed object, its new directories or a deletion: the syscalls a
    real write makes, seen by strace, show the file fsync, the rename, then the directory fsync."""
    root = (tmp_path / "store").resolve()
    root.mkdir()
    script = (
        "import sys; from cidadao_backup_dagster.core.artifacts.storage import LocalStorage\n"
        "s = LocalStorage(sys.argv[1]); s.put_bytes('a/b/manifest.json', b'{}'); s.delete('a/b/manifest.json')\n"
    )
    trace = tmp_path / "trace.txt"
    subprocess.run(
        ["strace", "-f", "-y", "-o", str(trace), "-e", "trace=fsync,rename,renameat,renameat2,unlink,unlinkat"]
        + [sys.executable, "-c", script, str(root)],
        check=True,
        capture_output=True,
    )
    calls = []  # (syscall, path or the quoted paths) for every successful call
    for line in trace.read_text().splitlines():
        m = _SYSCALL.match(line)
        if not m or m.group(3) != "0":
            continue
        name, args = m.group(1), m.group(2)
        if name == "fsync":
            fd = _FD_PATH.match(args)
            calls.append((name, fd.group(1) if fd else args))
        else:
            calls.append((name.removesuffix("at2").removesuffix("at"), tuple(re.findall(r'"([^"]*)"', args))))
    final, folder = f"{root}/a/b/manifest.json", f"{root}/a/b"

    rename = next(i for i, (name, args) in enumerate(calls) if name == "rename" and args[-1:] == (final,))
    assert ".partial-" in calls[rename][1][0]
    assert ("fsync", calls[rename][1][0]) in calls[:rename], "the file's data is synced before its rename"
    assert ("fsync", folder) in calls[rename + 1 :], f"no fsync of {folder} after the rename: {calls}"
    before = calls[:rename]  # the new directories a and a/b are entries of root and a: both synced
    assert ("fsync", str(root)) in before and ("fsync", f"{root}/a") in before, calls

    unlink = calls.index(("unlink", (final,)))
    assert ("fsync", folder) in calls[unlink + 1 :], f"no fsync of {folder} after the delete: {calls}"


def test_s3_unreachable_endpoint_names_the_fix(refused_port):
    client = make_s3_client(f"http://127.0.0.1:{refused_port}", max_attempts=2)
    storage = S3Storage(client, "some-bucket", prefix="backups")
    with pytest.raises(BackupError) as info:
        storage.check_writable()
    text = str(info.value)
    assert "unreachable" in text and "AWS_ENDPOINT_URL" in text and "Fix:" in text
    assert "testing" not in text  # the (dummy) secret key never shows


def test_s3_missing_bucket_names_the_fix(s3_client):
    storage = S3Storage(s3_client, "cbd-no-such-bucket-0000", prefix="backups")
    with pytest.raises(BackupError) as info:
        storage.check_writable()
    text = str(info.value)
    assert "cbd-no-such-bucket-0000" in text and "create the bucket" in text and "404" in text


def test_s3_part_size_below_the_minimum_is_a_configuration_error(s3_client):
    with pytest.raises(ConfigurationError) as info:
        S3Storage(s3_client, "abc", part_size=4 * MiB)
    assert info.value.variable == "BACKUP_S3_PART_SIZE_MB"
    assert "5 MiB" in str(info.value)


# ------------------------------------------------------------------------------------- storage URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("/var/backups", "unsupported scheme '(none)'"),
        ("ftp://host/path", "unsupported scheme 'ftp'"),
        ("s3://ab/prefix", "'ab' is not a valid bucket name"),  # shorter than 3 characters
        ("s3://My_Bucket/prefix", "'My_Bucket' is not a valid bucket name"),
        ("s3:///prefix-only", "'' is not a valid bucket name"),
        ("file://relative/path", "names host 'relative'"),
        ("file:relative/path", "is not an absolute path"),
    ],
)
def test_storage_from_url_rejects_bad_urls_naming_the_variable(url, expected):
    with pytest.raises(ConfigurationError) as info:
        storage_from_url(url, variable="BACKUP_STORAGE_URL", s3_client_factory=lambda: None)
    text = str(info.value)
    assert info.value.variable == "BACKUP_STORAGE_URL"
    assert text.startswith("BACKUP_STORAGE_URL: ")
    assert expected in text
    assert "Fix: " in text


def test_storage_from_url_s3_without_a_client_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="BACKUP_STORAGE_URL: an s3:// URL needs an S3 client"):
        storage_from_url("s3://my-bucket/x", variable="BACKUP_STORAGE_URL")


def test_storage_from_url_builds_working_backends(tmp_path, s3_client, make_bucket):
    local = storage_from_url(f"file://{tmp_path}/with%20space/backups", variable="BACKUP_STORAGE_URL")
    assert isinstance(local, LocalStorage)
    assert local.root == Path(tmp_path, "with space", "backups")
    local.put_bytes("k.bin", b"local")
    assert Path(tmp_path, "with space", "backups", "k.bin").read_bytes() == b"local"

    bucket = make_bucket()
    s3 = storage_from_url(
        f"s3://{bucket}/cidadao/prod/",
        variable="BACKUP_STORAGE_URL",
        s3_client_factory=lambda: s3_client,
        part_size=PART,
    )
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.part_size) == (bucket, "cidadao/prod", PART)
    assert s3.url == f"s3://{bucket}/cidadao/prod"
    s3.put_bytes("k.bin", b"s3")
    assert s3_client.get_object(Bucket=bucket, Key="cidadao/prod/k.bin")["Body"].read() == b"s3"
    assert s3.list_keys("") == ["k.bin"]
