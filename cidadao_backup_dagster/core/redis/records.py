"""Copying keys into a target: (key, TTL, DUMP payload) batches read from a throwaway server or a logical
snapshot file, written with pipelined RESTORE ... REPLACE."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ..artifacts.storage import MiB
from ..errors import PermanentError
from .endpoint import Logger, RedisEndpoint, explain
from .messages import execute_restores, show_key, without_bytes, without_echo
from .rdb import iter_resp_commands
from .server import ThrowawayRedis

SHORT_TTL_MS = 5 * 60 * 1000  # keys this close to expiring may legitimately vanish between copy and count


@dataclass
class CopyStats:
    restored: dict[int, int] = field(default_factory=dict)
    short_ttl: dict[int, int] = field(default_factory=dict)  # keys restored with < 5 min left
    expired: int = 0  # already expired when copied: not restored


def _records_from_server(server: ThrowawayRedis, dbs: list[int], batch: int) -> Iterator[tuple[int, list]]:
    """(db, [(key, ttl_ms or 0, payload)]) batches read with pipelined DUMP + PTTL (relative TTLs)."""
    for db in dbs:
        client = server.client(db)
        cursor = 0
        while True:
            cursor, names = client.scan(cursor=cursor, count=batch)
            if names:
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.dump(name)
                    pipe.pttl(name)
                replies = pipe.execute()
                yield db, [(n, replies[2 * i + 1], replies[2 * i]) for i, n in enumerate(names)]
            if cursor == 0:
                break


def _records_from_logical(path: Path, batch: int) -> Iterator[tuple[int, list]]:
    """(db, [(key, absolute expiry ms or 0, payload)]) batches from a logical snapshot file. A malformed
    stream is reported by position and the last good key, never by its bytes (they may be values)."""
    db, records, done, last = 0, [], 0, None
    with open(path, "rb", buffering=MiB) as f:
        try:
            for args in iter_resp_commands(f):
                name = args[0].upper()
                if name == b"SELECT":
                    if records:
                        yield db, records
                        records = []
                    db = int(args[1])
                elif name == b"RESTORE":
                    records.append((args[1], int(args[2]), args[3]))
                    last = args[1]
                    if len(records) >= batch:
                        yield db, records
                        records = []
                done += 1
        except (ValueError, IndexError) as exc:
            after = f" (after key {show_key(last)})" if last is not None else ""
            raise PermanentError(
                f"The logical snapshot is malformed at command {done + 1:,}{after}: "
                f"{without_bytes(str(exc)) or type(exc).__name__}. The restore stopped there. Fix: pick "
                "another snapshot"
            ) from None
    if records:
        yield db, records


def copy_records(
    batches: Iterator[tuple[int, list]], target: RedisEndpoint, *, absolute: bool, say: Logger
) -> CopyStats:
    """RESTORE ... REPLACE every record into the target, pipelined per batch."""
    stats = CopyStats()
    clients: dict[int, redis.Redis] = {}
    last_report = time.monotonic()
    try:
        for db, records in batches:
            client = clients.get(db) or clients.setdefault(db, target.client(db=db))
            now_ms = int(time.time() * 1000)
            pipe = client.pipeline(transaction=False)
            sent: list[tuple[bytes, bytes]] = []
            for key, ttl, payload in records:
                if payload is None:
                    continue
                left = (ttl - now_ms if ttl > 0 else -1) if absolute else ttl
                if left == -2 or (ttl > 0 and left <= 0):
                    stats.expired += 1
                    continue
                if absolute:
                    pipe.execute_command("RESTORE", key, ttl, payload, "REPLACE", "ABSTTL")
                else:
                    pipe.execute_command("RESTORE", key, max(left, 0), payload, "REPLACE")
                sent.append((key, payload))
                if 0 < left < SHORT_TTL_MS:
                    stats.short_ttl[db] = stats.short_ttl.get(db, 0) + 1
            execute_restores(pipe, sent, f"The target Redis at {target.display()}", db)
            stats.restored[db] = stats.restored.get(db, 0) + len(sent)
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                say(f"Restored {sum(stats.restored.values()):,} keys so far")
    except redis.RedisError as exc:
        raise explain(target, without_echo(exc), "restoring keys into") from None
    finally:
        for c in clients.values():
            c.close()
    return stats
