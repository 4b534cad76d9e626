"""The storage interface every backend implements, and the sizes and modes they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import BinaryIO

MiB = 1024 * 1024
# S3 allows at most 10,000 parts; 16 MiB parts reach 160 GB, enough for this workload.
DEFAULT_PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
# S3 parts uploading at once: each holds a part in memory meanwhile (2 x 16 MiB parts keep up with a backup's
# compressed stream, ~40 MB/s on 2 cores; a slow, far link may want more).
DEFAULT_PARTS_IN_FLIGHT = 2
FILE_MODE = 0o600  # local artifacts, manifests and audit records: the owner only (citizens' personal data)
DIR_MODE = 0o700  # folders this process creates under (and including) the storage root
SSE_MODES = ("AES256", "aws:kms", "off")  # BACKUP_S3_SSE: SSE-S3 (default), SSE-KMS, none


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
