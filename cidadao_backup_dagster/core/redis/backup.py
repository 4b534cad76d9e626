"""One Redis snapshot, end to end: connect -> point-in-time RDB over the replication protocol (or the logical
fallback, see fetch.py) -> verify while streaming -> zstd + SHA-256 pipeline -> storage -> manifest (last).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import redis
import zstandard

from ... import __version__
from ..artifacts.manifest import Manifest, iso, utc_now
from ..artifacts.pipeline import EncryptionStage, Progress, StreamStats, ZstdSettings
from ..artifacts.publish import NewObject, artifact_entry, data_key, manifest_data, run_timings, tool_versions
from ..artifacts.publish import safe_name as safe_name  # re-exported: defs names series with it
from ..artifacts.storage import ObjectWriter, Storage
from ..errors import BackupError, ConfigurationError
from .endpoint import Logger, RedisAccessError, explain, keyspace, server_facts
from .endpoint import RedisEndpoint as RedisEndpoint  # re-exported: most callers import it from here
from .fetch import IterReader, LogicalDump, ReplicationSync, SyncRefused
from .rdb import RdbCheck

log = logging.getLogger(__name__)
Mode = Literal["auto", "rdb", "logical"]
MODES = ("auto", "rdb", "logical")


@dataclass(frozen=True)
class RedisSnapshotSettings(ZstdSettings):
    mode: Mode = "auto"
    scan_batch: int = 1000


def partition_segment(partition: str) -> str:
    """Hourly partition keys look like 2026-11-24-13:00. A colon is legal in S3 keys and Linux paths but not
    on Windows/SMB, and `scp`/`rsync`/`tar` read `a:b` as host:path; storage uses 2026-11-24-1300 instead
    (same order, so listings still sort by time)."""
    return partition.replace(":", "")


def backup_redis(
    endpoint: RedisEndpoint,
    storage: Storage,
    *,
    series: str,
    partition: str,
    source_name: str,
    settings: RedisSnapshotSettings = RedisSnapshotSettings(),
    encryption: EncryptionStage | None = None,
    encryption_info: dict | None = None,
    extra: dict | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    warn: Logger = log.warning,
) -> Manifest:
    """Snapshot `endpoint` into `storage` under `series/<partition segment>`. Returns the manifest, written last.

    On any failure the partial upload is aborted and no manifest is written; an earlier snapshot of the same
    partition stays valid until the new one is complete."""
    if settings.mode not in MODES:
        raise ConfigurationError("REDIS_SNAPSHOT_MODE", f"{settings.mode!r} is not a mode", "use auto, rdb or logical")
    started_at = utc_now()
    t0 = time.monotonic()
    storage.check_writable()
    client, facts, before, at_snapshot, sync, fallback_reason, taken_at = _start(endpoint, settings.mode, warn)
    mode = "rdb" if sync is not None else "logical"
    segment = partition_segment(partition)
    ext = ("rdb.zst" if mode == "rdb" else "resp.zst") + (".age" if encryption else "")
    obj = NewObject(
        storage,
        data_key(series, segment, source_name, "." + ext),
        redact=endpoint.redact,
        untouched="earlier snapshots are untouched",
    )
    dump = None
    source: ReplicationSync | IterReader | None = sync
    if sync is None:
        dbs = sorted(set(before) | set(at_snapshot))
        dump = LogicalDump(endpoint, dbs, _logical_header(endpoint, facts, taken_at), batch=settings.scan_batch)
        source = IterReader(dump.blocks())
    try:
        stats, check, fetch_seconds = obj.write(
            lambda writer: _stream(writer, source, sync, endpoint, settings, encryption, on_progress, t0)
        )
    finally:
        if sync is not None:
            sync.close()
        client.close()

    contents, describe = _contents(sync, check, dump, at_snapshot, fallback_reason)
    data = manifest_data(
        kind=f"redis-{mode}",
        partition=segment,
        head={"dagster_partition": partition},
        series=series,
        extra=extra,
        artifact=artifact_entry(
            obj,
            stats,
            describe=describe,
            compression=settings.compression,
            encryption=encryption_info if encryption else None,
        ),
        source=_source_facts(endpoint, source_name, facts),
        contents=contents,
        tools=tool_versions(redis_py=redis.__version__, zstandard=zstandard.__version__),
        timings=run_timings(
            started_at,
            _snapshot_time(check, taken_at),
            t0,
            ("fetch_seconds", fetch_seconds),
            stats.raw_bytes,
            also={"payload_started_at": iso(taken_at)},
        ),
    )
    return obj.publish(series, data)


def _start(endpoint: RedisEndpoint, mode: str, warn: Logger):
    """Connect, read the server's facts and keyspace, and start the SYNC (or settle for a logical snapshot):
    (client, facts, keyspace before, keyspace at the snapshot, sync or None, why not, when the payload started)."""
    client = endpoint.client()
    try:
        facts = server_facts(client)
        before = keyspace(client)
    except redis.RedisError as exc:
        raise explain(endpoint, exc, "reading INFO from") from None
    sync, fallback_reason = _start_sync(endpoint, mode, warn)
    taken_at = utc_now()  # diskless: the fork happened just before the header; disk-based: the save just ended
    try:
        at_snapshot = keyspace(client)
    except redis.RedisError as exc:
        if sync:
            sync.close()
        raise explain(endpoint, exc, "reading INFO keyspace from") from None
    return client, facts, before, at_snapshot, sync, fallback_reason, taken_at


def _start_sync(endpoint: RedisEndpoint, mode: str, warn: Logger) -> tuple[ReplicationSync | None, str | None]:
    """A replication SYNC for modes auto and rdb; (None, why) when auto falls back to a logical snapshot."""
    if mode == "logical":
        return None, None
    try:
        return ReplicationSync(endpoint), None
    except SyncRefused as exc:
        if mode == "rdb":
            raise RedisAccessError(
                f"{exc}. Fix: this server does not allow replication (managed services such as ElastiCache and "
                "Redis Cloud refuse SYNC): set REDIS_SNAPSHOT_MODE=logical (or auto)"
            ) from None
        warn(
            f"{exc}: falling back to a logical snapshot (SCAN + DUMP + PTTL). It is not point-in-time: each "
            "key is as it was when read. Set REDIS_SNAPSHOT_MODE=logical to skip the SYNC attempt"
        )
        return None, str(exc)


def _logical_header(endpoint: RedisEndpoint, facts: dict, taken_at: datetime) -> dict:
    return {
        "source": endpoint.display(),
        "redis_version": facts["redis_version"],
        "started_at": iso(taken_at),
        "tool": f"cidadao_backup_dagster {__version__}",
    }


def _stream(
    writer: ObjectWriter,
    source: ReplicationSync | IterReader,
    sync: ReplicationSync | None,
    endpoint: RedisEndpoint,
    settings: RedisSnapshotSettings,
    encryption: EncryptionStage | None,
    on_progress: Callable[[Progress], None] | None,
    t0: float,
) -> tuple[StreamStats, RdbCheck | None, float]:
    """The snapshot through the pipeline into `writer`, the RDB verified on the way; (stats, check, seconds)."""
    try:
        stats = settings.stream(source, writer, encryption, on_progress)  # type: ignore[arg-type]
        check = None
        if sync is not None:
            check = sync.verifier.finish()
            if not check.ok:
                raise BackupError(
                    f"The RDB received from {endpoint.display()} failed verification: {'; '.join(check.problems)}"
                )
    except BackupError as exc:
        raise type(exc)(f"{exc}. Nothing was stored; earlier snapshots are untouched") from None
    return stats, check, time.monotonic() - t0


def _contents(
    sync: ReplicationSync | None,
    check: RdbCheck | None,
    dump: LogicalDump | None,
    at_snapshot: dict[int, dict[str, int]],
    fallback_reason: str | None,
) -> tuple[dict, dict]:
    """The manifest's `contents`, and the artifact's `format` and `restore_hint`."""
    expires = {str(db): v["expires"] for db, v in at_snapshot.items()}
    if sync is not None and check is not None:
        keys = {str(db): v["keys"] for db, v in at_snapshot.items()}
        contents = {
            "format": "rdb",
            "keys_per_db": keys,
            "expires_per_db": expires,
            "keys_total": sum(keys.values()),
            "keys_source": "INFO keyspace when the payload started (diskless: right after the fork; disk-based: "
            "when the server's save ended); the RDB itself is exact, writes in between can move these a little",
            **check.summary(),
            "diskless_transfer": sync.diskless,
        }
        return contents, {
            "format": "Redis RDB (point-in-time, from SYNC), zstd-compressed",
            "restore_hint": "zstd -d <file> -o dump.rdb; redis-server --dir <folder> --dbfilename dump.rdb "
            "(age -d first if encrypted)",
        }
    assert dump is not None
    keys = {str(db): n for db, n in dump.keys.items()}
    contents = {
        "format": "logical",
        "keys_per_db": keys,
        "expires_per_db": expires,
        "keys_total": sum(keys.values()),
        "keys_source": "RESTORE commands written per database (exact for this file)",
        "keys_vanished_during_scan": dump.vanished,
        "fallback_reason": fallback_reason,
    }
    return contents, {
        "format": "RESP stream of RESTORE ... REPLACE ABSTTL commands (logical snapshot), zstd-compressed",
        "restore_hint": "zstd -dc <file> | redis-cli -u <target url> --pipe  (age -d first if encrypted)",
    }


def _snapshot_time(check: RdbCheck | None, taken_at: datetime) -> datetime:
    """The RDB's own creation time (server clock, set when the fork started) is the exact one."""
    ctime = str(check.aux.get("ctime", "")) if check is not None else ""
    if ctime.isdigit() and abs(int(ctime) - taken_at.timestamp()) < 86400:
        return datetime.fromtimestamp(int(ctime), UTC)
    return taken_at


def _source_facts(endpoint: RedisEndpoint, source_name: str, facts: dict) -> dict:
    return {
        "url": endpoint.display(),
        "name": source_name,
        "host": endpoint.host,
        "port": endpoint.port,
        "user": endpoint.username,
        "tls": endpoint.tls,
        **facts,
    }
