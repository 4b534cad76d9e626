#!/usr/bin/env python3
"""Where a PostgreSQL backup's memory goes: the core backup (and its integrity re-read) in a child process per
setting, its RSS sampled every 10 ms and split by phase, against the same child's RSS after its imports.

  .venv/bin/python bench/profile_backup_memory.py --size-gb 0.5
  .venv/bin/python bench/profile_backup_memory.py --size-gb 0.5 --configs "threads=-1;threads=1,job_mb=2" \\
      --upload-delay-ms 400      # a slow link: every UploadPart waits, so the parts in flight fill up

Each config is `key=value,...` with keys: threads (zstd workers; 0 = in the calling thread), job_mb (zstd
job size; 0 = zstd's default), part_mb (S3 part size), in_flight (S3 parts uploading at once), verify (1:
also run the integrity re-read, verify_pg_artifact), local (1: LocalStorage instead of S3), trace (1: also
report tracemalloc's peak of Python objects; zstd's C buffers are not in it). Unset keys keep the code's defaults.

Columns: base = RSS after imports (Python, boto3, zstandard, psycopg); dump = peak RSS during backup_postgres;
verify = peak during verify_pg_artifact; maxrss = the child's ru_maxrss. Not a timed benchmark: wall
figures are one run each on a shared machine (the load is printed)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402

DEFAULT_CONFIGS = "defaults;threads=0;threads=1;threads=2;threads=1,job_mb=2;threads=2,job_mb=2;in_flight=2"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PhaseSampler(threading.Thread):
    """Peak RSS of this process per phase, sampled every 10 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.phase, self.peaks, self._done = "base", {}, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.01):
            rss = _rss()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)

    def enter(self, phase: str) -> None:
        rss = _rss()
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
        self.phase = phase
        self.peaks[phase] = rss

    def stop(self) -> None:
        self._done.set()
        self.join()


def child(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    for name in ("--url", "--endpoint", "--bucket", "--config", "--result", "--delay-ms"):
        p.add_argument(name, required=True)
    a = p.parse_args(argv)
    cfg = json.loads(a.config)
    from cidadao_backup_dagster.core.artifacts.storage import LocalStorage, MiB, S3Storage
    from cidadao_backup_dagster.core.postgres.backup import BackupSettings, backup_postgres
    from cidadao_backup_dagster.core.postgres.client import PgConnection
    from cidadao_backup_dagster.core.postgres.verify import verify_pg_artifact

    client = h.s3_client(a.endpoint)
    delay = float(a.delay_ms) / 1000
    if delay:
        upload_part = client.upload_part

        def slow_upload_part(**kw):
            time.sleep(delay)  # a slow link: the part's bytes stay in memory meanwhile
            return upload_part(**kw)

        client.upload_part = slow_upload_part
    storage = S3Storage(client, a.bucket, "bench", **({"part_size": cfg["part_mb"] * MiB} if "part_mb" in cfg else {}))
    if cfg.get("local"):
        storage = LocalStorage(Path(a.result).parent / "local-store")
    if "in_flight" in cfg:
        storage.max_in_flight = cfg["in_flight"]
    names = {"threads": "zstd_threads", "job_mb": "zstd_job_mb"}
    settings = BackupSettings(**{field: cfg[key] for key, field in names.items() if key in cfg})
    if cfg.get("trace"):
        import tracemalloc

        tracemalloc.start()
    sampler = PhaseSampler()
    sampler.start()
    time.sleep(0.05)
    sampler.enter("dump")
    t0 = time.monotonic()
    manifest = backup_postgres(
        PgConnection.from_url(a.url), storage, series="bench/pg", partition="p", settings=settings
    )
    t1 = time.monotonic()
    out = {"dump_s": t1 - t0, "stored": manifest.stored_bytes, "raw": manifest.raw_bytes}
    if cfg.get("trace"):
        out["traced_peak"] = tracemalloc.get_traced_memory()[1]
    if cfg.get("verify"):
        sampler.enter("verify")
        result = verify_pg_artifact(storage, manifest)
        out["verify_s"] = time.monotonic() - t1
        out["verify_problems"] = result.problems
    sampler.enter("end")
    sampler.stop()
    out["peaks"] = sampler.peaks
    out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(a.result).write_text(json.dumps(out))
    return 0


def parse_config(spec: str) -> dict:
    if spec.strip() in ("", "defaults"):
        return {}
    return {k.strip(): int(v) for k, v in (item.split("=") for item in spec.split(",") if item.strip())}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=0.5)
    p.add_argument("--configs", default=DEFAULT_CONFIGS)
    p.add_argument("--upload-delay-ms", type=float, default=0)
    p.add_argument("--verify", action="store_true", help="also run the integrity re-read after each backup")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5432)
    p.add_argument("--user", default="postgres")
    a = p.parse_args(argv)
    pg = h.Pg(a.host, a.port, a.user)
    db = h.ensure_database(pg, h.BACKUP_SHAPE, a.size_gb)["database"]
    work = h.OUT / "memory-profile"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    with h.MotoServer(work / "moto.log") as moto:
        for spec in a.configs.split(";"):
            cfg = parse_config(spec) | ({"verify": 1} if a.verify else {})
            bucket = moto.new_bucket("cbd-mem")
            result = work / "result.json"
            load = h.loadavg()
            argv = [sys.executable, __file__, "_child", "--url", pg.url(db), "--endpoint", moto.endpoint]
            argv += ["--bucket", bucket, "--config", json.dumps(cfg), "--result", str(result)]
            subprocess.run([*argv, "--delay-ms", str(a.upload_delay_ms)], check=True, env=h.base_env())
            out = json.loads(result.read_text())
            moto.empty(bucket)
            shutil.rmtree(work / "local-store", ignore_errors=True)
            pk = out["peaks"]
            row = (
                f"{spec or 'defaults':<28} base {h.mb(pk['base']):>4} MB  dump {h.mb(pk['dump']):>4} MB "
                f"(+{h.mb(pk['dump'] - pk['base'])})  {out['dump_s']:5.2f}s"
            )
            if "verify" in pk:
                row += f"  verify {h.mb(pk['verify']):>4} MB {out['verify_s']:5.2f}s {out['verify_problems'] or 'ok'}"
            if "traced_peak" in out:
                row += f"  python objects peak {h.mb(out['traced_peak'])} MB"
            row += f"  maxrss {h.mb(out['maxrss'])} MB  stored {out['stored']:,}  load {load}"
            h.log(row)
            rows.append(row)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        sys.exit(child(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
