"""An S3-compatible bucket as storage: multipart uploads in equal parts, server-side encryption, typed errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO

from ...errors import BackupError, ConfigurationError, PermanentError, StorageAccessDenied, StorageReadError
from .base import DEFAULT_PART_SIZE, DEFAULT_PARTS_IN_FLIGHT, MIN_PART_SIZE, SSE_MODES, MiB, ObjectWriter, Storage


class _S3MultipartWriter(ObjectWriter):
    """Buffers into equal-size parts (Cloudflare R2 rejects unequal non-trailing parts) and uploads
    them on a small thread pool, so at most `max_in_flight + 1` parts are ever held in memory: each part is
    filled in place and handed to its upload as it is (a bytearray, which botocore sends and retries like
    bytes), never copied. Retries with backoff on 5xx/SlowDown come from botocore's retry mode on the client."""

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
        self._buf = bytearray()  # the part being filled; grows to part_size, then goes to its upload
        self._upload_id: str | None = None
        self._parts: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._max_in_flight = max_in_flight

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        while len(self._buf) + len(view) >= self._part_size:
            take = self._part_size - len(self._buf)
            self._buf += view[:take]
            view = view[take:]
            part, self._buf = self._buf, bytearray()
            self._submit(part)
        self._buf += view
        return len(data)

    def _submit(self, part: bytes | bytearray) -> None:
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

    def _upload_part(self, number: int, body: bytes | bytearray) -> dict:
        resp = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def commit(self) -> None:
        if self._upload_id is None:  # small object: one PUT
            with self._encryption_errors():
                self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buf), **self._encryption)
            return
        try:
            if self._buf:
                part, self._buf = self._buf, bytearray()
                self._submit(part)
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
        max_in_flight: int = DEFAULT_PARTS_IN_FLIGHT,
    ):
        if part_size < MIN_PART_SIZE:
            raise ConfigurationError(
                "BACKUP_S3_PART_SIZE_MB", f"{part_size // MiB} MiB is below S3's 5 MiB part minimum", "use 5 or more"
            )
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self.part_size = part_size
        self.max_in_flight = max_in_flight  # parts uploading at once; each holds part_size bytes meanwhile
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
        return _S3MultipartWriter(
            self.client, self.bucket, self._key(key), self.part_size, self.max_in_flight, encryption=self.encryption
        )

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
