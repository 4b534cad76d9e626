"""Emptying a target Redis safely: refuse a non-empty target without confirmation by name, and before a
confirmed FLUSHALL snapshot the target into a series of its own (`redis/<host_port>/pre-flush`): no snapshot
that storage holds, no flush."""

from __future__ import annotations

import logging
from typing import Literal

import redis

from ..artifacts.layout import series_prefix
from ..artifacts.manifest import Manifest, is_present, read_manifest, utc_now
from ..artifacts.pipeline import EncryptionStage
from ..artifacts.storage import Storage
from ..errors import BackupError, RefusedError
from .backup import backup_redis, safe_name
from .endpoint import Logger, RedisEndpoint, count_keys, explain, key_counts

log = logging.getLogger(__name__)
IfNotEmpty = Literal["refuse", "merge", "flush"]


def target_state(target: RedisEndpoint, if_not_empty: IfNotEmpty, confirm: str) -> tuple[dict[int, int], str]:
    """(keys per db in the target, what to do: 'empty' | 'merge' | 'flush'); refuses without confirmation."""
    counts = count_keys(target, "reading INFO keyspace from")
    total = sum(counts.values())
    if total == 0:
        return counts, "empty"
    if if_not_empty == "merge":
        return counts, "merge"
    if if_not_empty == "flush" and confirm.strip() == target.name:
        return counts, "flush"
    raise RefusedError(
        f"Refusing to restore into {target.display()}: it already holds {total:,} keys. To wipe it first set "
        f"if_target_not_empty: flush and confirm_target: {target.name!r}; to keep its keys and overwrite only "
        "same-named ones set if_target_not_empty: merge. Nothing was changed"
    )


def confirm_flush(target: RedisEndpoint, confirm: str) -> None:
    """Refuse unless `confirm` repeats the target's name (host:port): checked before anything else happens."""
    if confirm.strip() != target.name:
        raise RefusedError(
            f"Refusing to FLUSHALL {target.display()}: confirm_target must repeat the target's name exactly, "
            f"{target.name!r} (got {confirm.strip()!r}). Nothing was changed"
        )


def flush_all(target: RedisEndpoint, confirm: str) -> dict[int, int]:
    """FLUSHALL, only when `confirm` repeats the target's name (host:port). Returns what was there before."""
    confirm_flush(target, confirm)
    client = target.client()
    try:
        before = key_counts(client)
        client.flushall()
        return before
    except redis.RedisError as exc:
        raise explain(target, exc, "flushing (FLUSHALL)") from None
    finally:
        client.close()


def pre_flush_series(target: RedisEndpoint) -> str:
    """Where the snapshots taken before flushing `target` go: a series per target, beside the hourly ones."""
    return series_prefix("redis", safe_name(target.name), "pre-flush")


def snapshot_before_flush(
    target: RedisEndpoint,
    storage: Storage,
    *,
    encryption: EncryptionStage | None = None,
    encryption_info: dict | None = None,
    say: Logger = log.info,
) -> Manifest:
    """Snapshot `target` the way the hourly backup does and check storage holds it (manifest written last,
    object at its size). Raises, touching nothing, when it cannot: then nothing may flush the target."""
    series = pre_flush_series(target)
    say(f"Snapshotting {target.display()} into {storage.uri(series)}/ before flushing it")
    try:
        manifest = backup_redis(
            target,
            storage,
            series=series,
            partition=utc_now().strftime("%Y-%m-%d-%H%M%S"),
            source_name=safe_name(target.name),
            encryption=encryption,
            encryption_info=encryption_info,
            extra={"purpose": "pre-flush snapshot of a restore_redis target"},
            warn=say,
        )
        stored = read_manifest(storage, series, manifest.partition)
        problem = "" if stored is not None and is_present(storage, stored) else "storage does not hold it whole"
    except (BackupError, OSError) as exc:
        problem = target.redact(str(exc))
    if problem:
        raise RefusedError(
            f"Refusing to flush {target.display()}: the snapshot of it that must come first failed ({problem}). "
            "Nothing was changed. Fix the cause, or restore with if_target_not_empty: merge"
        )
    return manifest
