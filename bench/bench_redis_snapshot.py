#!/usr/bin/env python3
"""Redis snapshot against its baseline, measured in the same run as whole processes.

  baseline  `redis-cli --rdb <file>` (the fastest way to pull an RDB off a server), then boto3
            `upload_file` of that file (multipart, boto3's default 10 threads) to the same S3.
  ours      a child process calling `core.redis.backup.backup_redis(mode=rdb)` into S3Storage: SYNC -> RDB
            verifier (magic, version, EOF, CRC64) -> SHA-256 -> zstd -> SHA-256 -> multipart upload ->
            manifest. No local file.
  dagster   what an operator runs: `dg launch -m cidadao_backup_dagster.definitions
            --assets redis_snapshot --partition <previous hour>`, asset checks included.

One redis-server (its own port and temp dir, `repl-diskless-sync-delay 0`, `save ""`) is filled with keys of
every common type: --size-gb of Redis memory (about 200 B per key; --keys sets the count instead). After the
timed rounds, ours runs on a second instance with twice the keys ("memory flat"), and the integrity check
(re-read, SHA-256, zstd, CRC64, redis-check-rdb) is timed on that snapshot. Target: <= 1.2x baseline.

  .venv/bin/python bench/bench_redis_snapshot.py                 # 0.56 GiB of Redis, about 3,000,000 keys
  .venv/bin/python bench/bench_redis_snapshot.py --keys 3000000 --repeat 3
  .venv/bin/python bench/bench_redis_snapshot.py --size-gb 0.05 --repeat 1      # smoke test
Results: bench/out/redis-snapshot-<keys><tag>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402

TARGET_RATIO = 1.2
FLATNESS_MAX_RATIO = 1.15
BYTES_PER_KEY = 200  # used_memory per key of populate()'s mix (598 MB for 3,000,000 keys; 48 MiB for 256,876)
VARIANTS = "baseline,ours,dagster"
SERIES = "redis/bench/hourly"


class Redis:
    """A throwaway redis-server on a free port, persisting nothing."""

    def __init__(self, workdir: Path):
        self.port = h.free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
            + ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
            + ["--logfile", str(self.dir / "redis.log")],
        )
        for _ in range(300):
            if self.cli("ping") == "PONG\n":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True).stdout

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def populate(redis: Redis, keys: int) -> dict:
    """80% strings (20-200 bytes), 10% hashes (5 fields), 4% lists, 3% sets, 3% sorted sets; 10% with a TTL;
    spread over databases 0 and 1."""
    pipe = subprocess.Popen(
        ["redis-cli", "-p", str(redis.port), "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    buf: list[bytes] = []
    db = None
    for i in range(keys):
        want = 0 if i % 10 else 1
        if want != db:
            buf.append(resp(b"SELECT", str(want).encode()))
            db = want
        k = b"key:%d" % i
        r = i % 100
        if r < 80:
            buf.append(resp(b"SET", k, (b"v%d-" % i) * (1 + i % 25)))
        elif r < 90:
            buf.append(resp(b"HSET", k, b"a", b"1", b"b", b"%d" % i, b"c", b"x" * 30, b"d", b"y", b"e", b"z" * 10))
        elif r < 94:
            buf.append(resp(b"RPUSH", k, *[b"item%d" % j for j in range(8)]))
        elif r < 97:
            buf.append(resp(b"SADD", k, *[b"m%d" % (i + j) for j in range(6)]))
        else:
            buf.append(resp(b"ZADD", k, b"1", b"a", b"2.5", b"b", b"3", b"c%d" % i))
        if i % 10 == 3:
            buf.append(resp(b"EXPIRE", k, b"86400"))
        if len(buf) >= 20000:
            pipe.stdin.write(b"".join(buf))  # type: ignore[union-attr]
            buf.clear()
    pipe.stdin.write(b"".join(buf))  # type: ignore[union-attr]
    pipe.stdin.close()  # type: ignore[union-attr]
    pipe.wait()
    return {
        "keys": keys,
        "keyspace": redis.cli("info", "keyspace").strip().splitlines()[1:],
        "used_memory_human": redis.cli("info", "memory").split("used_memory_human:")[1].split()[0],
    }


# ========================================================================================== variants


def child(s: h.Session, label: str, *args: str) -> tuple[h.Measured, dict]:
    result = s.workdir / f"{label}-{os.getpid()}-{time.monotonic_ns()}.json"
    m = s.measure(label, [sys.executable, str(Path(__file__).resolve()), "_child", *args, "--result", str(result)])
    data = json.loads(result.read_text())
    result.unlink()
    return m, data


def variant_baseline(s: h.Session, redis: Redis, moto: h.MotoServer, bucket: str) -> h.Run:
    rdb = s.workdir / "baseline.rdb"
    fetch = s.measure("baseline: redis-cli --rdb", h.redis_cli_rdb(redis.port, rdb))
    size = rdb.stat().st_size
    upload = s.measure("baseline: upload_file", h.s3_put(moto.endpoint, bucket, "baseline.rdb", rdb))
    rdb.unlink()
    return h.Run([fetch, upload], stored_bytes=size, extra={"rdb_bytes": size})


def variant_ours(s: h.Session, redis: Redis, moto: h.MotoServer, bucket: str, label: str = "ours") -> h.Run:
    m, data = child(s, label, "ours", moto.endpoint, bucket, redis.url)
    return h.Run([m], stored_bytes=data["stored_bytes"], extra=data)


def variant_dagster(s: h.Session, redis: Redis, moto: h.MotoServer, bucket: str) -> h.Run:
    env = {
        "REDIS_URL": redis.url,
        "BACKUP_STORAGE_URL": f"s3://{bucket}/bench",
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ENDPOINT_URL_S3": moto.endpoint,
    }
    run = s.dagster("dagster", h.dg_launch_assets("redis_snapshot", partition=h.previous_hour_utc()), env)
    manifests = moto.manifests(bucket)
    if not manifests:
        raise RuntimeError(f"the dagster run stored no snapshot manifest in s3://{bucket}")
    run.stored_bytes = int(manifests[-1]["artifact"]["stored_bytes"])
    return run


# ============================================================================================= main


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", type=int, default=0, help="number of keys (default: from --size-gb)")
    p.add_argument("--flat-keys", type=int, default=0, help="keys of the flatness instance (default 2x)")


def main(argv: list[str]) -> int:
    args = h.parse_args(__doc__, argv, size_gb=0.56, variants=VARIANTS, more=options)
    for tool in ("redis-server", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (apt-get install redis-server)")
    keys = args.keys or int(args.size_gb * h.GiB / BYTES_PER_KEY)
    flat_keys = args.flat_keys or 2 * keys
    s = h.Session(args, "redis")
    redis_dir = Path(tempfile.mkdtemp(prefix="cbd-bench-redis-"))
    servers: list[Redis] = []
    try:
        with h.MotoServer(s.workdir / "moto.log") as moto:
            buckets = {name: moto.new_bucket(f"cbd-bench-redis-{name}") for name in ("baseline", "ours", "dagster")}
            servers.append(redis := Redis(redis_dir))
            h.log(f"filling redis-server :{redis.port} with {keys:,} keys")
            dataset = populate(redis, keys)
            h.log(f"... {dataset}")
            plan = []
            if s.wants("baseline"):
                plan.append(("baseline", lambda: variant_baseline(s, redis, moto, buckets["baseline"])))
            if s.wants("ours"):
                plan.append(("ours", lambda: variant_ours(s, redis, moto, buckets["ours"])))
            if s.wants("dagster"):
                plan.append(("dagster", lambda: variant_dagster(s, redis, moto, buckets["dagster"])))

            def empty_buckets() -> None:
                for bucket in buckets.values():
                    moto.empty(bucket)

            summaries = s.interleave(plan, moto=moto, after_each=empty_buckets)
            redis.stop()
            servers.remove(redis)

            servers.append(big := Redis(redis_dir))
            h.log(f"flatness instance: {flat_keys:,} keys")
            populate(big, flat_keys)
            flat_bucket = moto.new_bucket("cbd-bench-redis-flat")
            flat = [variant_ours(s, big, moto, flat_bucket, label=f"ours, {flat_keys:,} keys") for _ in range(2)]
            verify, verified = child(s, "integrity check", "verify", moto.endpoint, flat_bucket)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(redis_dir, ignore_errors=True)

    by = {x.variant: x for x in summaries}
    base = by.get("baseline")
    summaries.append(h.Summary(f"ours, {flat_keys:,} keys", flat))
    lines = s.header(
        f"Redis snapshot benchmark: {keys:,} keys ({dataset['used_memory_human']} in Redis)"
        + (f", RDB {base.last['rdb_bytes'] / h.MiB:.1f} MiB" if base else "")
    )
    lines += ["", h.ratio_table(summaries, ["baseline"]), ""]
    if base:
        lines.append(
            f"baseline stages (median): redis-cli --rdb {base.median_stage(0):.2f}s + upload_file "
            f"{base.median_stage(1):.2f}s"
        )
    if by.get("dagster") and by["dagster"].last.get("steps"):
        steps = by["dagster"].last["steps"]
        lines.append("dagster steps (last run): " + ", ".join(f"{k} {v:.2f}s" for k, v in steps.items()))
    lines.append(
        f"integrity check (re-read, SHA-256, zstd, RDB CRC64, redis-check-rdb) on {flat_keys:,} keys: "
        f"{verify.wall_s:.2f}s, peak RSS {h.mb(verify.peak_tree_rss)} MB; {verified}"
    )
    checks = []
    for name in ("ours", "dagster"):
        if name in by and base:
            checks.append(h.ratio_check(by[name], base, TARGET_RATIO))
    if "ours" in by:
        small, large = by["ours"].max_proc_rss, max(r.max_proc_rss for r in flat)
        checks.append(
            (
                large / small <= FLATNESS_MAX_RATIO,
                f"ours RSS flat: largest process {h.mb(small)} MB at {keys:,} keys, {h.mb(large)} MB at "
                f"{flat_keys:,} keys (x{large / small:.2f}; limit x{FLATNESS_MAX_RATIO})",
            )
        )
    result = h.OUT / f"redis-snapshot-{keys}{args.tag}.json"
    integrity = {"seconds": verify.wall_s, "peak_rss_bytes": verify.peak_tree_rss, **verified}
    return s.finish(lines, summaries, checks, result, dataset=dataset, flat_keys=flat_keys, integrity_check=integrity)


# ======================================================================== children (the measured core)


def _child(argv: list[str]) -> int:
    *args, flag, result = argv
    assert flag == "--result"
    what, endpoint, bucket, *rest = args
    from cidadao_backup_dagster.core.artifacts.storage import S3Storage

    storage = S3Storage(h.s3_client(endpoint), bucket, prefix="bench")
    if what == "ours":
        from cidadao_backup_dagster.core.redis.backup import RedisEndpoint, RedisSnapshotSettings, backup_redis

        m = backup_redis(
            RedisEndpoint.from_url(rest[0], socket_timeout=300),
            storage,
            series=SERIES,
            partition="2026-11-24-13:00",
            source_name="bench",
            settings=RedisSnapshotSettings(mode="rdb"),
        )
        art, contents = m.data["artifact"], m.data["contents"]
        out = {
            "raw_bytes": art["raw_bytes"],
            "stored_bytes": art["stored_bytes"],
            "crc64_verified": contents["crc64_verified"],
            "keys": contents["keys_total"],
        }
    else:
        from cidadao_backup_dagster.core.redis.snapshots import select_snapshot
        from cidadao_backup_dagster.core.redis.verify import verify_redis_artifact

        checked = verify_redis_artifact(storage, select_snapshot(storage, SERIES))
        out = {"ok": checked.ok, "redis_check_rdb": checked.details.get("redis_check_rdb")}
    Path(result).write_text(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        sys.exit(_child(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
