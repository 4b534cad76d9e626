"""Where backups live: one small interface, two real backends (an S3-compatible bucket, a local folder).

Writers are explicit about success: nothing is visible under its final key until `commit()`, and
`abort()` removes every trace (a local temp file, an S3 multipart upload).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from ...errors import ConfigurationError
from ...secrets import has_credentials
from .base import (
    DEFAULT_PART_SIZE,
    DEFAULT_PARTS_IN_FLIGHT,
    DIR_MODE,
    FILE_MODE,
    MIN_PART_SIZE,
    SSE_MODES,
    MiB,
    ObjectWriter,
    Storage,
)
from .local import LocalStorage
from .s3 import S3Storage, sse_arguments, write_error_hint, write_error_type

__all__ = [
    "DEFAULT_PART_SIZE",
    "DEFAULT_PARTS_IN_FLIGHT",
    "DIR_MODE",
    "FILE_MODE",
    "MIN_PART_SIZE",
    "SSE_MODES",
    "LocalStorage",
    "MiB",
    "ObjectWriter",
    "S3Storage",
    "Storage",
    "sse_arguments",
    "storage_from_url",
    "write_error_hint",
    "write_error_type",
]


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def storage_from_url(
    url: str,
    *,
    variable: str,
    s3_client_factory: Callable[[], Any] | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    parts_in_flight: int = DEFAULT_PARTS_IN_FLIGHT,
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
        return S3Storage(
            s3_client_factory(), bucket, unquote(parts.path), part_size=part_size, max_in_flight=parts_in_flight
        )
    raise ConfigurationError(
        variable,
        f"unsupported scheme {parts.scheme or '(none)'!r}",
        "use s3://bucket/prefix (AWS S3, Supabase Storage, MinIO, R2) or file:///absolute/path",
    )
