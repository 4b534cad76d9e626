"""Where backups live: one small interface, two real backends (an S3-compatible bucket, a local folder).

Writers are explicit about success: nothing is visible under its final key until `commit()`, and
`abort()` removes every trace (a local temp file, an S3 multipart upload).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from ..errors import BackupError, ConfigurationError, PermanentError, StorageAccessDenied, StorageReadError
from ..secrets import has_credentials

MiB = 1024 * 1024
# S3 allows at most 10,000 parts; 16 MiB parts reach 160 GB, enough for this workload.
DEFAULT_PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
FILE_MODE = 0o600  # local artifacts, manifests and audit records: the owner only (citizens' personal data)
DIR_MODE = 0o700  # folders this process creates under (and including) the storage root
SSE_MODES = ("AES256", "aws:kms", "off")  # BACKUP_S3_SSE: SSE-S3 (default), SSE-KMS, none

log = logging.getLogger(__name__)


class ObjectWriter(ABC):
    """A streaming upload. Bytes become visible under the key only on `commit()`."""

    @abstractmethod
    def write(self, data: bytes | memoryview) -> int: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


class Storage(ABC):
    """Keys are `/`-separated paths relative to the storage root (the URL's prefix)."""

    url: str

    def uri(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    @abstractmethod
    def check_writable(self) -> None:
        """Fail fast, before any dump starts, when the storage cannot be reached or written."""

    @abstractmethod
    def open_write(self, key: str) -> ObjectWriter: ...

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO: ...

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None:
        writer = self.open_write(key)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()


# --------------------------------------------------------------------------------------------- local


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, an unlink, a new subdirectory) survive a power loss: fsync of the
    file alone does not persist its name (pgBackRest and Barman do the same)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # a filesystem that cannot sync directories (as PostgreSQL tolerates)
            raise
    finally:
        os.close(fd)


def _make_dirs(folder: Path, root: Path) -> None:
    """Create `folder` and its missing parents, outermost first, each followed by an fsync of its parent.
    Those at or under `root` are made 0700 whatever the umask (chmod after mkdir: the umask only narrows,
    and an odd one could even take the owner's own bits away); those above it are the operator's ground
    and get the default mode, as `mkdir -p` would. A folder that already exists is never changed."""
    missing = [d for d in (folder, *folder.parents) if not d.exists()]
    for new_dir in reversed(missing):
        private = new_dir == root or root in new_dir.parents
        try:
            new_dir.mkdir(mode=DIR_MODE if private else 0o777)
        except FileExistsError:  # a concurrent writer made it first (with the same mode if it is ours)
            continue
        if private:
            os.chmod(new_dir, DIR_MODE)
        _fsync_dir(new_dir.parent)  # each new directory's entry lives in its parent


def _create_private(path: Path) -> BinaryIO:
    """A new file open for writing, 0600 from its first instant (never readable by others, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # exact, even under a umask that would narrow it below 0600
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise


class _LocalWriter(ObjectWriter):
    def __init__(self, final: Path, root: Path):
        self._final = final
        _make_dirs(final.parent, root)
        # Same directory as the final file, so the commit is an atomic rename (which keeps the 0600 mode).
        self._tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
        self._f = _create_private(self._tmp)

    def write(self, data: bytes | memoryview) -> int:
        return self._f.write(data)

    def commit(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self._final)
        _fsync_dir(self._final.parent)  # the rename itself is durable only once its directory is synced

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self._tmp.unlink(missing_ok=True)


class LocalStorage(Storage):
    """A local folder. Files are 0600 and the folders this process creates (the root too, when it makes it)
    0700; a root the operator made keeps its mode, with a warning when others can read it."""

    _warned: set[Path] = set()  # roots already warned about in this process

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise BackupError(f"Key {key!r} escapes the storage root {self.root}")
        return path

    def check_writable(self) -> None:
        try:
            _make_dirs(self.root, self.root)
            probe = self.root / f".write-probe-{uuid.uuid4().hex[:8]}"
            _create_private(probe).close()
            probe.unlink()
        except OSError as exc:
            raise PermanentError(
                f"Local backup folder {self.root} is not writable ({exc.strerror}). "
                "Fix: create it with write permission for this user, or point BACKUP_STORAGE_URL elsewhere."
            ) from exc
        self._warn_if_shared()

    def _warn_if_shared(self) -> None:
        """A root the operator made is left as it is; say so once when group or others can enter it."""
        mode = self.root.stat().st_mode & 0o777
        if mode & 0o077 and self.root not in LocalStorage._warned:
            LocalStorage._warned.add(self.root)
            log.warning(
                "Local backup folder %s is mode %o: group or others can reach the backups in it. Folders and "
                "files this worker creates are 0700/0600, but it does not change a folder it did not make. "
                "Fix: chmod 700 %s",
                self.root,
                mode,
                self.root,
            )

    def open_write(self, key: str) -> ObjectWriter:
        return _LocalWriter(self._path(key), self.root)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise BackupError(f"{self.uri(key)} does not exist") from exc
        except OSError as exc:  # permission, I/O error: unsure, never "absent"
            raise _local_read_error(self.uri(key), exc) from None

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _local_read_error(self.uri(key), exc) from None

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            if not base.exists():
                return []
            return sorted(
                p.relative_to(self.root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and ".partial-" not in p.name and not p.name.startswith(".write-probe")
            )
        except OSError as exc:
            raise _local_read_error(self.uri(prefix), exc) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)  # so a deletion cannot reappear after a power loss


# ------------------------------------------------------------------------------------------------ s3


class _S3MultipartWriter(ObjectWriter):
    """Buffers into equal-size parts (Cloudflare R2 rejects unequal non-trailing parts) and uploads
    them on a small thread pool, so at most `max_in_flight + 1` parts are ever held in memory.
    Retries with backoff on 5xx/SlowDown come from botocore's retry mode on the client."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        part_size: int,
        max_in_flight: int = 4,
        encryption: dict[str, str] | None = None,
    ):
        self._client, self._bucket, self._key = client, bucket, key
        self._encryption = encryption or {}  # ServerSideEncryption (+ SSEKMSKeyId) for the create / the PUT
        self._part_size = part_size
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._closed = False

    def write(self, data: bytes | memoryview) -> int:
        self._buf += data
        while len(self._buf) >= self._part_size:
            part = bytes(self._buf[: self._part_size])
            del self._buf[: self._part_size]
            self._submit(part)
        return len(data)

    def _submit(self, part: bytes) -> None:
        if self._upload_id is None:
            with self._encryption_errors():
                self._upload_id = self._client.create_multipart_upload(
                    Bucket=self._bucket, Key=self._key, **self._encryption
                )["UploadId"]
            self._pool = ThreadPoolExecutor(self._max_in_flight, thread_name_prefix="s3-part")
        for done in [f for f in self._parts if f.done()]:
            done.result()  # surface a failed part early instead of after the whole dump
        self._slots.acquire()
        number = len(self._parts) + 1
        future = self._pool.submit(self._upload_part, number, part)  # type: ignore[union-attr]
        future.add_done_callback(lambda _f: self._slots.release())
        self._parts.append(future)

    def _upload_part(self, number: int, body: bytes) -> dict:
        resp = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def commit(self) -> None:
        self._closed = True
        if self._upload_id is None:  # small object: one PUT
            with self._encryption_errors():
                self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buf), **self._encryption)
            return
        try:
            if self._buf:
                self._submit(bytes(self._buf))
                self._buf.clear()
            parts = [f.result() for f in self._parts]
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.abort()
            raise
        finally:
            self._pool.shutdown(wait=True)  # type: ignore[union-attr]

    @contextmanager
    def _encryption_errors(self) -> Iterator[None]:
        """A service that does not take the SSE headers (R2, Supabase Storage, MinIO without KMS) or a KMS key
        that cannot be used: say which setting to change instead of a bare S3 error code."""
        from botocore.exceptions import ClientError

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if not self._encryption or not (code in _SSE_REFUSALS or code.startswith("KMS.")):
                raise
            sse = self._encryption["ServerSideEncryption"]
            raise PermanentError(
                f"s3://{self._bucket}/{self._key} was not written: the service refused server-side encryption "
                f"{sse} ({code}: {str(error.get('Message', ''))[:200]}). Fix: for a service that does not take SSE "
                "headers (Cloudflare R2, Supabase Storage, MinIO without KMS) set BACKUP_S3_SSE=off; with aws:kms "
                "check BACKUP_S3_SSE_KMS_KEY_ID and that these credentials may use the key (kms:GenerateDataKey)"
            ) from None

    def abort(self) -> None:
        self._closed = True
        self._buf.clear()
        if self._upload_id is None:
            return
        if self._pool is not None:
            for f in self._parts:
                f.cancel()
            self._pool.shutdown(wait=True)
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
        except Exception:  # noqa: BLE001 - best effort; lifecycle rules also expire abandoned uploads
            pass
        self._upload_id = None


_SSE_REFUSALS = {"NotImplemented", "InvalidArgument", "InvalidRequest", "InvalidEncryptionAlgorithmError"}


def sse_arguments(sse: str = "AES256", kms_key_id: str = "", variable: str = "BACKUP_S3_SSE") -> dict[str, str]:
    """The S3 arguments for BACKUP_S3_SSE / BACKUP_S3_SSE_KMS_KEY_ID (`variable` and `variable`_KMS_KEY_ID in
    errors): AES256 (SSE-S3, the default), aws:kms (SSE-KMS; the account's AWS-managed key aws/s3 unless a key
    id, ARN or alias is given) or off (no header)."""
    mode = {m.lower(): m for m in SSE_MODES}.get((sse or "AES256").strip().lower())
    key = (kms_key_id or "").strip()
    if mode is None:
        raise ConfigurationError(
            variable,
            f"{sse!r} is not a server-side encryption mode",
            f"use AES256 (SSE-S3, default), aws:kms (SSE-KMS, with {variable}_KMS_KEY_ID) or off",
        )
    if key and mode != "aws:kms":
        raise ConfigurationError(
            f"{variable}_KMS_KEY_ID",
            f"is set but {variable} is {mode}",
            f"set {variable}=aws:kms to encrypt with that key, or unset the key id",
        )
    if mode == "off":
        return {}
    return {"ServerSideEncryption": mode, **({"SSEKMSKeyId": key} if key else {})}


class S3Storage(Storage):
    """An S3-compatible bucket. Every object is written with server-side encryption (`sse`: AES256 by
    default, aws:kms with an optional key id, or off for services that do not take the headers)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        part_size: int = DEFAULT_PART_SIZE,
        *,
        sse: str = "AES256",
        kms_key_id: str = "",
    ):
        if part_size < MIN_PART_SIZE:
            raise ConfigurationError(
                "BACKUP_S3_PART_SIZE_MB", f"{part_size // MiB} MiB is below S3's 5 MiB part minimum", "use 5 or more"
            )
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self.part_size = part_size
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.use_encryption(sse, kms_key_id)

    def use_encryption(self, sse: str = "AES256", kms_key_id: str = "", variable: str = "BACKUP_S3_SSE") -> None:
        """Server-side encryption of every object written from now on (see sse_arguments)."""
        self.encryption = sse_arguments(sse, kms_key_id, variable)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check_writable(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            if code in ("403", "AccessDenied"):
                raise PermanentError(
                    f"S3 bucket {self.bucket!r} refused HeadBucket (access denied): these credentials lack "
                    f"s3:ListBucket on arn:aws:s3:::{self.bucket} (HeadBucket is authorised as ListBucket). Fix: grant "
                    "it (docs/least-privilege.md), or check the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY pair."
                ) from None
            # A missing bucket needs a person; a 5xx after botocore's retries may pass.
            error = PermanentError if code in ("404", "NoSuchBucket") else BackupError
            raise error(
                f"S3 bucket {self.bucket!r} is not usable (error {code}). Fix: create the bucket, or check "
                "BACKUP_STORAGE_URL, AWS_ENDPOINT_URL and the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY pair."
            ) from None
        except BotoCoreError as exc:
            raise BackupError(
                f"S3 storage {self.url} is unreachable ({type(exc).__name__}: {exc}). "
                "Fix: check AWS_ENDPOINT_URL and the network path to it."
            ) from None

    def open_write(self, key: str) -> ObjectWriter:
        return _S3MultipartWriter(self.client, self.bucket, self._key(key), self.part_size, encryption=self.encryption)

    def open_read(self, key: str) -> BinaryIO:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidObjectState":
                raise BackupError(
                    f"{self.uri(key)} is in a cold storage class (Glacier / Deep Archive) and must be restored "
                    "first: aws s3api restore-object --bucket "
                    f"{self.bucket} --key {self._key(key)} --restore-request "
                    "'Days=3,GlacierJobParameters={Tier=Standard}', then retry once `aws s3api head-object` "
                    'shows ongoing-request="false" (hours for Glacier, up to 12-48 h for Deep Archive)'
                ) from None
            raise _s3_read_error(self.uri(key), exc) from None
        except BotoCoreError as exc:
            raise _s3_read_error(self.uri(key), exc) from None

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        body = self.open_read(key)
        try:
            return body.read()
        except (BotoCoreError, ClientError, OSError) as exc:  # the body can fail mid-read
            raise _s3_read_error(self.uri(key), exc) from None
        finally:
            body.close()

    def size(self, key: str) -> int | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _s3_read_error(self.uri(key), exc) from None
        except BotoCoreError as exc:
            raise _s3_read_error(self.uri(key), exc) from None

    def list_keys(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise _s3_read_error(self.uri(prefix), exc) from None
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def _local_read_error(uri: str, exc: OSError) -> StorageReadError:
    error = StorageAccessDenied if isinstance(exc, PermissionError) else StorageReadError
    return error(f"{uri} cannot be read ({exc.strerror or type(exc).__name__}). Fix: check the folder's permissions "
                 "and the disk; nothing was treated as missing")  # fmt: skip


_DENIED = ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "KMS.AccessDenied")


def write_error_type(exc: BaseException) -> type[BackupError]:
    """A write refused for want of a permission (or a bucket) will be refused again: not worth a retry."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""
    return PermanentError if code in _DENIED else BackupError


def write_error_hint(exc: BaseException) -> str:
    if write_error_type(exc) is PermanentError:
        return " Fix: grant s3:PutObject and s3:AbortMultipartUpload on this prefix (docs/least-privilege.md)."
    return ""


def _s3_read_error(uri: str, exc: Exception) -> StorageReadError:
    """Typed from the S3 error code: AccessDenied is permanent; 5xx (after botocore's retries), timeouts and
    connection errors may pass. Either way the reader stops: it is never "the object is not there"."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return StorageAccessDenied(
            f"{uri} cannot be read: access denied ({code}). Fix: grant s3:GetObject and s3:ListBucket to these "
            "credentials"
        )
    return StorageReadError(f"{uri} cannot be read ({code or type(exc).__name__}); storage may be unavailable")


# --------------------------------------------------------------------------------------------- URLs

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def storage_from_url(
    url: str,
    *,
    variable: str,
    s3_client_factory: Callable[[], Any] | None = None,
    part_size: int = DEFAULT_PART_SIZE,
) -> Storage:
    """Build a Storage from `s3://bucket/prefix` or `file:///path`; errors name `variable` and never repeat
    credentials (a storage URL takes none)."""
    url = (url or "").strip()
    if not url:
        raise ConfigurationError(variable, "is empty", "set it to s3://bucket/prefix or file:///absolute/path")
    if has_credentials(url):
        raise ConfigurationError(
            variable,
            "carries credentials (user:password@)",
            "remove them: storage URLs hold none. S3 reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (an "
            "S3-compatible service also AWS_ENDPOINT_URL, without credentials); file:// needs none",
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigurationError(
            variable, "cannot be parsed", "use s3://bucket/prefix or file:///absolute/path"
        ) from None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(
                variable, f"the file URL names host {parts.netloc!r}", "use three slashes: file:///absolute/path"
            )
        if not parts.path.startswith("/"):
            raise ConfigurationError(variable, f"{parts.path!r} is not an absolute path", "use file:///absolute/path")
        return LocalStorage(unquote(parts.path))
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET.match(bucket):
            raise ConfigurationError(
                variable,
                f"{bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, dots or hyphens)",
                "use s3://bucket-name/optional/prefix",
            )
        if s3_client_factory is None:
            raise ConfigurationError(variable, "an s3:// URL needs an S3 client", "configure the S3 resource")
        return S3Storage(s3_client_factory(), bucket, unquote(parts.path), part_size=part_size)
    raise ConfigurationError(
        variable,
        f"unsupported scheme {parts.scheme or '(none)'!r}",
        "use s3://bucket/prefix (AWS S3, Supabase Storage, MinIO, R2) or file:///absolute/path",
    )


def iter_chunks(f: BinaryIO, size: int = MiB) -> Iterator[bytes]:
    while chunk := f.read(size):
        yield chunk
