#!/usr/bin/env python3
"""Benchmark `redis_snapshot` (core.redis_backup.backup_redis) against the baseline measured in the same run.

  baseline  `redis-cli --rdb <file>` (the fastest way to pull an RDB off a server), then boto3
            `upload_file` of that file (multipart, boto3's default 10 threads) to the same S3.
  ours      `backup_redis(mode=rdb)` into S3Storage: SYNC -> RDB verifier (magic, version, EOF, CRC64) ->
            SHA-256 -> zstd -> SHA-256 -> multipart upload -> manifest. No local file.

Both run as subprocesses against one redis-server (its own port and temp dir, `repl-diskless-sync-delay 0`,
`save ""`) filled with --keys keys of every common type, and a moto S3 server process on a free port.
Variants alternate for --repeats rounds; medians are compared. Peak RSS is each measured process's
ru_maxrss (wait4); "memory flat" compares ours on the full instance with ours on a --small-keys instance.

Usage (repo root):  .venv/bin/python bench/bench_redis_snapshot.py [--keys 3000000] [--repeats 3]
Results: printed, and bench/out/redis-snapshot-<keys>.json (bench/out/ is gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
MiB = 1024 * 1024
TARGET_RATIO = 1.2
BUCKET = "cbd-bench-redis"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ servers


class Moto:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.log = open(workdir / "moto.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.log.close()


class Redis:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
            + ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
            + ["--logfile", str(self.dir / "redis.log")],
        )
        for _ in range(300):
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout == b"PONG\n":
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
    buf = []
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
    info = redis.cli("info", "keyspace")
    return {
        "keyspace": info.strip().splitlines()[1:],
        "used_memory_human": redis.cli("info", "memory").split("used_memory_human:")[1].split()[0],
    }


# --------------------------------------------------------------------------------------- measuring


def measured(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes of that process, stdout). Peak RSS comes from GNU time's %M: a child's
    own ru_maxrss would include this (bigger) Python parent's high-water mark, inherited across fork+exec."""
    rss_file = tempfile.NamedTemporaryFile(suffix=".rss", delete=False)
    rss_file.close()
    timed = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd] if Path("/usr/bin/time").exists() else cmd
    t0 = time.monotonic()
    proc = subprocess.run(timed, capture_output=True, env=env)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    text = Path(rss_file.name).read_text().strip()
    os.unlink(rss_file.name)
    rss = int(text.splitlines()[-1]) * 1024 if text else 0
    return wall, rss, proc.stdout.decode()


def child_env(moto: Moto) -> dict:
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto.endpoint,
    )
    return env


def baseline(redis: Redis, moto: Moto, workdir: Path, n: int) -> dict:
    rdb = workdir / f"baseline-{n}.rdb"
    fetch_s, fetch_rss, _ = measured(["redis-cli", "-p", str(redis.port), "--rdb", str(rdb)])
    size = rdb.stat().st_size
    up_s, up_rss, _ = measured(
        [sys.executable, __file__, "--child", "upload", str(rdb), f"baseline/{n}.rdb"], child_env(moto)
    )
    rdb.unlink()
    return {
        "seconds": fetch_s + up_s,
        "fetch_s": fetch_s,
        "upload_s": up_s,
        "rdb_bytes": size,
        "peak_rss_mb": max(fetch_rss, up_rss) / MiB,
    }


def ours(redis: Redis, moto: Moto, n: int, prefix: str = "ours") -> dict:
    wall, rss, out = measured(
        [sys.executable, __file__, "--child", "ours", redis.url, f"{prefix}-{n}"], child_env(moto)
    )
    info = json.loads(out.strip().splitlines()[-1])
    return {"seconds": wall, "peak_rss_mb": rss / MiB, **info}


# --------------------------------------------------------------------------------------- children


def child_upload(path: str, key: str) -> None:
    import boto3

    boto3.client("s3").upload_file(path, BUCKET, key)


def child_ours(url: str, partition_tag: str) -> None:
    sys.path.insert(0, str(REPO))
    import boto3

    from cidadao_backup_dagster.core.artifacts.storage import S3Storage
    from cidadao_backup_dagster.core.redis.backup import RedisEndpoint, RedisSnapshotSettings, backup_redis

    storage = S3Storage(boto3.client("s3"), BUCKET, prefix=partition_tag)
    m = backup_redis(
        RedisEndpoint.from_url(url, socket_timeout=300),
        storage,
        series="redis/bench/hourly",
        partition="2026-11-24-13:00",
        source_name="bench",
        settings=RedisSnapshotSettings(mode="rdb"),
    )
    art, contents = m.data["artifact"], m.data["contents"]
    print(
        json.dumps(
            {
                "raw_bytes": art["raw_bytes"],
                "stored_bytes": art["stored_bytes"],
                "crc64_verified": contents["crc64_verified"],
                "keys": contents["keys_total"],
            }
        )
    )


def child_verify(tag: str) -> None:
    sys.path.insert(0, str(REPO))
    import boto3

    from cidadao_backup_dagster.core.artifacts.storage import S3Storage
    from cidadao_backup_dagster.core.redis.restore import select_snapshot, verify_redis_artifact

    storage = S3Storage(boto3.client("s3"), BUCKET, prefix=tag)
    result = verify_redis_artifact(storage, select_snapshot(storage, "redis/bench/hourly"))
    print(json.dumps({"ok": result.ok, "redis_check_rdb": result.details.get("redis_check_rdb")}))


def crc_throughput() -> float:
    sys.path.insert(0, str(REPO))
    from cidadao_backup_dagster.core.redis.rdb import Crc64

    data = os.urandom(64 * MiB)
    best = 1e9
    for _ in range(3):
        c = Crc64()
        t0 = time.perf_counter()
        for i in range(0, len(data), MiB):
            c.update(data[i : i + MiB])
        c.value  # noqa: B018
        best = min(best, time.perf_counter() - t0)
    return len(data) / MiB / best


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=3_000_000)
    ap.add_argument("--flat-keys", type=int, default=0, help="second instance for the RSS flatness check (2x --keys)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        {"upload": child_upload, "ours": child_ours, "verify": child_verify}[args.child[0]](*args.child[1:])
        return
    for tool in ("redis-server", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (apt-get install redis-server)")

    OUT.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cbd-bench-redis-"))
    moto = Moto(workdir)
    redis = small = None
    try:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=moto.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=BUCKET)
        log(f"CRC64 (numpy lanes) throughput: {crc_throughput():,.0f} MiB/s")
        redis = Redis(workdir)
        log(f"Filling redis-server :{redis.port} with {args.keys:,} keys")
        t0 = time.monotonic()
        dataset = populate(redis, args.keys)
        log(f"... {dataset} in {time.monotonic() - t0:.0f} s")
        runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
        for r in range(args.repeats):
            order = ("baseline", "ours") if r % 2 == 0 else ("ours", "baseline")
            for variant in order:
                res = baseline(redis, moto, workdir, r) if variant == "baseline" else ours(redis, moto, r)
                runs[variant].append(res)
                log(f"round {r + 1} {variant:8s} {res['seconds']:6.2f} s  peak RSS {res['peak_rss_mb']:6.1f} MiB")
        redis.stop()
        redis = None
        flat_keys = args.flat_keys or 2 * args.keys
        small = Redis(workdir)
        populate(small, flat_keys)
        small_runs = [ours(small, moto, r, prefix="flat") for r in range(2)]
        log(
            f"ours on {flat_keys:,} keys: {small_runs[0]['seconds']:.2f} s, peak RSS "
            f"{max(x['peak_rss_mb'] for x in small_runs):.1f} MiB"
        )
        verify_s, verify_rss, verify_out = measured(
            [sys.executable, __file__, "--child", "verify", "flat-1"], child_env(moto)
        )
        log(
            f"integrity check (re-read, SHA-256, zstd, RDB CRC64, redis-check-rdb) on {flat_keys:,} keys: "
            f"{verify_s:.2f} s, peak RSS {verify_rss / MiB:.0f} MiB; {verify_out.strip()}"
        )

        med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
        ratio = med["ours"] / med["baseline"]
        rss_big = max(x["peak_rss_mb"] for x in runs["ours"])
        rss_small = max(x["peak_rss_mb"] for x in small_runs)
        o = runs["ours"][0]
        result = {
            "keys": args.keys,
            "dataset": dataset,
            "rdb_mib": round(runs["baseline"][0]["rdb_bytes"] / MiB, 1),
            "stored_mib": round(o["stored_bytes"] / MiB, 1),
            "median_seconds": {k: round(v, 2) for k, v in med.items()},
            "ratio_ours_vs_baseline": round(ratio, 3),
            "target_ratio": TARGET_RATIO,
            "baseline_fetch_s": round(statistics.median(x["fetch_s"] for x in runs["baseline"]), 2),
            "baseline_upload_s": round(statistics.median(x["upload_s"] for x in runs["baseline"]), 2),
            "ours_peak_rss_mib": round(rss_big, 1),
            "flat_keys": flat_keys,
            "ours_peak_rss_mib_flat_instance": round(rss_small, 1),
            "rss_ratio_flat_vs_main": round(rss_small / rss_big, 2),
            "ours_seconds_flat_instance": round(small_runs[0]["seconds"], 2),
            "integrity_check_seconds_flat_instance": round(verify_s, 2),
            "runs": runs,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip(),
                "loadavg": open("/proc/loadavg").read().split()[:3],
            },
        }
        path = OUT / f"redis-snapshot-{args.keys}.json"
        path.write_text(json.dumps(result, indent=2))
        print()
        print(f"instance: {args.keys:,} keys, RDB {result['rdb_mib']} MiB (stored zstd: {result['stored_mib']} MiB)")
        print(
            f"baseline redis-cli --rdb + upload_file: {med['baseline']:.2f} s "
            f"(fetch {result['baseline_fetch_s']} s + upload {result['baseline_upload_s']} s)"
        )
        print(f"ours redis_snapshot (SYNC + verify + zstd + SHA-256 + upload + manifest): {med['ours']:.2f} s")
        verdict = "OK" if ratio <= TARGET_RATIO else "MISSED"
        print(f"ratio ours/baseline: {ratio:.2f}x (target <= {TARGET_RATIO}x) -> {verdict}")
        print(
            f"ours peak RSS: {rss_big:.0f} MiB at {args.keys:,} keys, {rss_small:.0f} MiB at {flat_keys:,} keys "
            f"(x{rss_small / rss_big:.2f} for twice the data; flat = about 1)"
        )
        print(f"results: {path}")
    finally:
        for server in (redis, small):
            if server is not None:
                server.stop()
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
