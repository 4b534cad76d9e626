"""Manifest blocks the PITR artifacts share, in the same shape as the dumps' (readers see one format)."""

from __future__ import annotations

import platform
import socket

import zstandard

from .... import __version__
from ...artifacts.pipeline import StreamStats
from ...artifacts.storage import Storage
from ..backup import BackupSettings


def artifact_entry(
    storage: Storage, key: str, fmt: str, hint: str, settings: BackupSettings, encryption_info, stats: StreamStats
) -> dict:
    return {
        "key": key,
        "uri": storage.uri(key),
        "format": fmt,
        "restore_hint": hint,
        "compression": {"codec": "zstd", "level": settings.zstd_level, "checksum": True},
        "encryption": encryption_info,
        "raw_bytes": stats.raw_bytes,
        "raw_sha256": stats.raw_sha256,
        "stored_bytes": stats.stored_bytes,
        "stored_sha256": stats.stored_sha256,
    }


def tools_entry(**tools: str) -> dict:
    return {
        **tools,
        "cidadao_backup_dagster": __version__,
        "zstandard": zstandard.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }
