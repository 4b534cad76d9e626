"""Restoring a stored Redis snapshot into a target Redis.

An RDB is restored by starting a throwaway `redis-server` on the file (a private unix socket, no TCP port,
no persistence) and copying every key to the target with pipelined DUMP/PTTL -> RESTORE ... REPLACE. That
works for any target the backup worker can reach, including TLS and managed services, where `MIGRATE`
cannot (it has no TLS and needs the throwaway server to reach the target itself). A logical snapshot is
already a stream of RESTORE commands and goes straight to the target.

Safety order: every refusal (unknown partition, SHA-256 mismatch, missing binary, a snapshot the local
redis-server cannot load, a non-empty target without confirmation) happens before the target is touched, and a
confirmed flush first snapshots the target (see flush.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ..artifacts.manifest import Manifest
from ..artifacts.pipeline import EncryptionStage
from ..artifacts.storage import MiB, Storage
from .endpoint import Logger, RedisEndpoint, count_keys
from .flush import IfNotEmpty, flush_all, snapshot_before_flush, target_state
from .records import _records_from_logical, _records_from_server, copy_records
from .server import Workdir, redis_binary
from .snapshots import fetch_snapshot, snapshot_format

log = logging.getLogger(__name__)


@dataclass
class RedisRestoreResult:
    target: str
    partition: str
    backup_uri: str
    format: str
    expected: dict[str, int]  # per db: keys in the snapshot (loaded by the throwaway server / RESTOREs in file)
    restored: dict[str, int]
    in_target: dict[str, int]
    flushed: bool
    fetch_seconds: float
    load_seconds: float
    copy_seconds: float
    verify_seconds: float
    total_seconds: float
    expired: int = 0
    mismatches: list[str] = field(default_factory=list)
    pre_flush_snapshot: str = ""  # URI of the target's snapshot taken before the flush ("" when not flushed)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def keys(self) -> int:
        return sum(self.restored.values())


def verify_counts(
    expected: dict[int, int], in_target: dict[int, int], short_ttl: dict[int, int], *, merged: bool
) -> list[str]:
    """Per db: the target holds what was restored (fewer only by keys that were about to expire; in merge mode
    the target may hold more)."""
    problems = []
    for db in sorted(set(expected) | set(in_target)):
        want, got, slack = expected.get(db, 0), in_target.get(db, 0), short_ttl.get(db, 0)
        if got < want - slack or (not merged and got > want):
            problems.append(f"db{db}: snapshot has {want:,} keys, target holds {got:,}")
    return problems


def restore_snapshot(
    storage: Storage,
    manifest: Manifest,
    target: RedisEndpoint,
    *,
    if_not_empty: IfNotEmpty = "refuse",
    confirm: str = "",
    server_bin: str | None = None,
    tmp_dir: str | None = None,
    identities: list | None = None,
    encryption: EncryptionStage | None = None,
    encryption_info: dict | None = None,
    batch: int = 1000,
    say: Logger = log.info,
) -> RedisRestoreResult:
    t0 = time.monotonic()
    target_state(target, if_not_empty, confirm)  # refuse early, before downloading anything
    fmt = snapshot_format(manifest)
    if fmt == "rdb":
        redis_binary("redis-server", server_bin)  # a clear error now rather than after the download
    with Workdir("cbd-redis-restore-", tmp_dir) as work:
        say(f"Fetching {storage.uri(manifest.artifact_key)} ({manifest.stored_bytes / MiB:,.1f} MiB), checking SHA-256")
        path = fetch_snapshot(storage, manifest, work.path, identities)
        fetched = time.monotonic()
        if fmt == "rdb":
            say("Loading the RDB into a throwaway redis-server")
            server = work.start_server(server_bin)
            expected = server.keyspace()
            batches = _records_from_server(server, sorted(expected), batch)
            absolute = False
        else:
            expected = {int(db): n for db, n in manifest.redis.keys_per_db.items()}
            batches = _records_from_logical(path, batch)
            absolute = True
        loaded = time.monotonic()
        _, action = target_state(target, if_not_empty, confirm)  # again: it may have changed meanwhile
        pre_flush = ""
        if action == "flush":
            kept = snapshot_before_flush(
                target, storage, encryption=encryption, encryption_info=encryption_info, say=say
            )
            pre_flush = storage.uri(kept.artifact_key)
            say(f"Flushing {target.display()} first (confirmed by name; its keys are kept in {pre_flush})")
            flush_all(target, confirm)
        say(f"Copying {sum(expected.values()):,} keys into {target.display()} (DUMP/RESTORE pipelines)")
        stats = copy_records(batches, target, absolute=absolute, say=say)
        copied = time.monotonic()
    in_target = count_keys(target)
    reference = stats.restored if fmt == "logical" else expected
    mismatches = verify_counts(reference, in_target, stats.short_ttl, merged=action == "merge")
    done = time.monotonic()
    return RedisRestoreResult(
        target=target.display(),
        partition=manifest.dagster_partition,
        backup_uri=storage.uri(manifest.artifact_key),
        format=fmt,
        expected={str(k): v for k, v in expected.items()},
        restored={str(k): v for k, v in stats.restored.items()},
        in_target={str(k): v for k, v in in_target.items()},
        flushed=action == "flush",
        fetch_seconds=round(fetched - t0, 3),
        load_seconds=round(loaded - fetched, 3),
        copy_seconds=round(copied - loaded, 3),
        verify_seconds=round(done - copied, 3),
        total_seconds=round(done - t0, 3),
        expired=stats.expired,
        mismatches=mismatches,
        pre_flush_snapshot=pre_flush,
    )
