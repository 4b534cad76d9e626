"""Redis restore drills: restore the newest valid snapshot into a throwaway redis-server, compare key counts
per database with the manifest, time it against the RTO, and store a report beside the snapshots."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from ..artifacts.drills import DrillReports
from ..artifacts.manifest import Manifest, iso, utc_now
from ..artifacts.storage import Storage
from ..errors import BackupError
from .endpoint import Logger
from .messages import execute_restores
from .records import _records_from_logical
from .server import ThrowawayRedis, Workdir
from .snapshots import fetch_snapshot, select_snapshot, snapshot_format

RTO_REDIS_S = 5 * 60  # strategy RTO table: "Cache failure < 5 minutes" (see drill docs for the choice)
REPORTS = DrillReports(
    "redis",
    "Redis restore drill",
    noun="snapshot",
    rto_s=RTO_REDIS_S,
    rto_name="a cache failure",
    passes_when="the snapshot loaded and every database's key count matched the manifest (within the keys that "
    "carry a TTL, which may have expired since)",
)
read_report = REPORTS.read_report
newest_passing_report = REPORTS.newest_passing_report


def count_tolerance(manifest: Manifest, db: str) -> int:
    """How far a restored database may differ from the manifest: keys with a TTL may have expired since, and
    an RDB's counts come from INFO right after the fork (writes racing it). 0.1% (at least 10) covers the race."""
    contents = manifest.redis
    expires = contents.expires_per_db.get(db, 0)
    keys = contents.keys_per_db.get(db, 0)
    race = max(10, keys // 1000) if contents.format == "rdb" else 0
    return expires + race


def run_redis_drill(
    storage: Storage,
    series: str,
    *,
    source: str,
    partition: str,
    server_bin: str | None = None,
    tmp_dir: str | None = None,
    identities: list | None = None,
    say: Logger = print,
) -> dict:
    """Restore the newest valid snapshot into a throwaway redis-server, compare key counts per database with
    the manifest, time it against the RTO, and store a report (also when the restore fails)."""
    started = utc_now()
    t0 = time.monotonic()
    manifest = select_snapshot(storage, series, "latest")
    report: dict = {
        "kind": "redis-restore-drill",
        "partition": partition,
        "backup_partition": manifest.dagster_partition,
        "backup_uri": storage.uri(manifest.artifact_key),
        "backup_sha256": manifest.stored_sha256,
        "backup_snapshot_at": manifest.timings.snapshot_at,
        "format": snapshot_format(manifest),
        "rto_seconds": RTO_REDIS_S,
        "started_at": iso(started),
    }
    try:
        with Workdir("cbd-redis-drill-", tmp_dir) as work:
            say(f"Drill: fetching {report['backup_uri']}")
            path = fetch_snapshot(storage, manifest, work.path, identities)
            fetched = time.monotonic()
            server = work.start_server(server_bin)  # an RDB loads at start; a logical one is replayed
            if report["format"] != "rdb":
                _copy_into_throwaway(path, server)
            loaded = time.monotonic()
            counts = {str(db): n for db, n in server.keyspace().items()}
            expected = dict(manifest.redis.keys_per_db)
            problems = _count_problems(manifest, expected, counts)
            report.update(
                passed=not problems,
                problems=problems,
                keys_expected=expected,
                keys_restored=counts,
                keys=sum(counts.values()),
                fetch_seconds=round(fetched - t0, 3),
                load_seconds=round(loaded - fetched, 3),
                duration_seconds=round(time.monotonic() - t0, 3),
            )
    except BackupError as exc:
        report.update(passed=False, problems=[str(exc)], duration_seconds=round(time.monotonic() - t0, 3))
    report["finished_at"] = iso(utc_now())
    REPORTS.write_report(storage, source, partition, report)
    return report


def _count_problems(manifest: Manifest, expected: dict[str, int], counts: dict[str, int]) -> list[str]:
    problems = []
    for db in sorted(set(expected) | set(counts), key=int):
        want, got, tol = expected.get(db, 0), counts.get(db, 0), count_tolerance(manifest, db)
        if abs(got - want) > tol:
            problems.append(f"db{db}: manifest says {want:,} keys, the restore holds {got:,} (tolerance {tol:,})")
    return problems


def _copy_into_throwaway(path: Path, server: ThrowawayRedis) -> None:
    """Replay a logical snapshot into the throwaway server over its unix socket."""
    clients: dict[int, redis.Redis] = {}
    for db, records in _records_from_logical(path, 1000):
        client = clients.get(db) or clients.setdefault(db, server.client(db))
        pipe = client.pipeline(transaction=False)
        for key, ttl, payload in records:
            pipe.execute_command("RESTORE", key, ttl, payload, "REPLACE", "ABSTTL")
        execute_restores(pipe, [(key, payload) for key, _ttl, payload in records], "The throwaway redis-server", db)
