#!/usr/bin/env python3
"""PostgreSQL backup against its baselines, measured in the same run as whole processes.

  floor    `pg_dump -Fc -Z0 <db> > /dev/null`: the fastest a dump can leave this machine.
  seed     the strategy document's script: `pg_dump <db> | gzip > file`, then boto3 `upload_file`.
  ours     a child process calling `core.postgres.backup.backup_postgres` into `S3Storage` (the core alone).
  dagster  what an operator runs: `dg launch -m cidadao_backup_dagster.definitions
           --assets postgres_daily_backup --partition <yesterday>`, asset checks included.
  --profile adds `ours` with other zstd level/threads, chunk and part sizes, or LocalStorage.

Targets (ours and dagster): <= 1.3x floor (dagster, the whole run: <= 1.5x), <= 0.5x seed, stored <= seed's
gzip, peak tree RSS < 300 MB; a run larger than an earlier untagged one also checks that RSS stays flat (x1.15
at most).

  .venv/bin/python bench/bench_postgres_backup.py                      # 1 GiB, 3 interleaved repeats
  .venv/bin/python bench/bench_postgres_backup.py --size-gb 2.0        # doubling run: RSS flatness
  .venv/bin/python bench/bench_postgres_backup.py --profile "level=1;threads=0;local=1;part_mb=8"
  .venv/bin/python bench/bench_postgres_backup.py --size-gb 0.05 --repeat 1   # smoke test
Results: bench/out/results-<size><tag>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402

TARGET_VS_FLOOR = 1.3  # the core call (ours)
TARGET_DAGSTER_VS_FLOOR = 1.5  # the operator's whole run, CLI and checks included (issue #16)
TARGET_VS_SEED = 0.5
TARGET_RSS_MB = 300
FLATNESS_MAX_RATIO = 1.15
VARIANTS = "floor,seed,ours,dagster"
DEFAULT_PROFILE = "level=1,threads=-1;level=3,threads=0;level=1,threads=0;level=3,threads=-1,chunk_mb=4"


@dataclass(frozen=True)
class OursConfig:
    zstd_level: int = 3
    zstd_threads: int = -1
    chunk_mb: float | None = None  # None: the core's default (pipeline.CHUNK)
    part_mb: int | None = None  # None: the core's default (storage.DEFAULT_PART_SIZE)
    local: int = 0  # 1: LocalStorage in the work folder instead of S3 (takes moto out of the picture)

    def label(self) -> str:
        if self == OursConfig():
            return "ours"
        bits = [f"l{self.zstd_level}", f"t{self.zstd_threads}"]
        if self.chunk_mb is not None:
            bits.append(f"chunk{self.chunk_mb:g}M")
        if self.part_mb is not None:
            bits.append(f"part{self.part_mb}M")
        if self.local:
            bits.append("local")
        return "ours[" + ",".join(bits) + "]"

    @classmethod
    def parse(cls, spec: str) -> OursConfig:
        names = {"level": "zstd_level", "l": "zstd_level", "threads": "zstd_threads", "t": "zstd_threads"}
        names |= {"chunk_mb": "chunk_mb", "chunk": "chunk_mb", "part_mb": "part_mb", "part": "part_mb"}
        kw: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            k, v = item.split("=")
            name = names.get(k.strip(), k.strip())
            kw[name] = float(v) if name == "chunk_mb" else int(v)
        return cls(**kw)


# ========================================================================================== variants


def variant_floor(s: h.Session, db: str) -> h.Run:
    return h.Run([s.measure("floor", h.pg_dump_floor(s.pg, db))])


def variant_seed(s: h.Session, db: str, moto: h.MotoServer, bucket: str) -> h.Run:
    gz = s.workdir / f"cidadao_ai_pg_{time.strftime('%Y%m%d_%H%M%S')}.sql.gz"
    dump = s.measure("seed: pg_dump | gzip > file", h.pg_dump_gzip(s.pg, db, gz))
    local, key = gz.stat().st_size, f"backups/{gz.name}"
    result = s.workdir / f"upload-{uuid.uuid4().hex[:8]}.json"
    upload = s.measure("seed: boto3 upload_file", h.s3_put(moto.endpoint, bucket, key, gz, result))
    s3_calls = json.loads(result.read_text())["s3_calls"]
    result.unlink()
    gz.unlink()
    stored = int(moto.client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    if stored != local:
        raise RuntimeError(f"seed upload stored {stored} bytes, file had {local}")
    complete = sum(s3_calls["CompleteMultipartUpload"])
    return h.Run([dump, upload], stored_bytes=stored, extra={"s3_calls": s3_calls, "complete_seconds": complete})


def variant_ours(s: h.Session, db: str, moto: h.MotoServer, bucket: str, cfg: OursConfig) -> h.Run:
    result = s.workdir / f"ours-{uuid.uuid4().hex[:8]}.json"
    local_root = s.workdir / "local-store"
    argv = [sys.executable, str(Path(__file__).resolve()), "_ours", "--url", s.pg.url(db)]
    argv += ["--endpoint", moto.endpoint, "--bucket", bucket, "--prefix", "bench", "--series", f"postgres/{db}/daily"]
    argv += ["--partition", s.args.partition, "--config", json.dumps(asdict(cfg)), "--result", str(result)]
    argv += ["--local-root", str(local_root)]
    m = s.measure(cfg.label(), argv)
    data = json.loads(result.read_text())
    result.unlink()
    art = data["manifest"]["artifact"]
    if cfg.local:
        stored_now = (local_root / art["key"]).stat().st_size
        shutil.rmtree(local_root, ignore_errors=True)
    else:
        stored_now = int(moto.client().head_object(Bucket=bucket, Key=f"bench/{art['key']}")["ContentLength"])
    if stored_now != art["stored_bytes"]:
        raise RuntimeError("stored object size differs from the manifest")
    timings = data["manifest"]["timings"]
    return h.Run(
        [m],
        stored_bytes=art["stored_bytes"],
        extra={
            "raw_bytes": art["raw_bytes"],
            "inner_total_seconds": timings["total_seconds"],
            "inner_dump_seconds": timings["dump_seconds"],
            "child_seconds": data["child_seconds"],
            "import_seconds": data["import_seconds"],
            "rows_total": data["manifest"]["contents"]["rows_total"],
            "complete_seconds": sum(data["s3_calls"]["CompleteMultipartUpload"]),
            "upload_parts": len(data["s3_calls"]["UploadPart"]),
            "self_maxrss_kb": data["self_maxrss_kb"],
        },
    )


def dagster_backup_env(s: h.Session, db: str, moto: h.MotoServer, bucket: str) -> dict[str, str]:
    return {
        "DATABASE_URL": s.pg.url(db),
        "BACKUP_STORAGE_URL": f"s3://{bucket}/bench",
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ENDPOINT_URL_S3": moto.endpoint,
    }


def variant_dagster(s: h.Session, db: str, moto: h.MotoServer, bucket: str) -> h.Run:
    argv = h.dg_launch_assets("postgres_daily_backup", partition=s.args.partition)
    run = s.dagster("dagster", argv, dagster_backup_env(s, db, moto, bucket))
    manifests = moto.manifests(bucket)
    if not manifests:
        raise RuntimeError(f"the dagster run stored no backup manifest in s3://{bucket}")
    art = manifests[-1]["artifact"]
    run.stored_bytes, run.extra["raw_bytes"] = int(art["stored_bytes"]), art.get("raw_bytes")
    return run


# ======================================================================================== reporting


def evaluate(
    ours: h.Summary, floor: h.Summary | None, seed: h.Summary | None, vs_floor: float = TARGET_VS_FLOOR
) -> list[tuple[bool, str]]:
    checks = []
    if floor:
        checks.append(h.ratio_check(ours, floor, vs_floor))
    if seed:
        checks.append(h.ratio_check(ours, seed, TARGET_VS_SEED))
        if ours.stored_bytes and seed.stored_bytes:
            checks.append(
                (
                    ours.stored_bytes <= seed.stored_bytes,
                    f"{ours.variant} stored {ours.stored_bytes:,} B <= seed gzip {seed.stored_bytes:,} B: "
                    f"ratio {ours.stored_bytes / seed.stored_bytes:.3f}",
                )
            )
    checks.append(h.rss_check(ours, TARGET_RSS_MB))
    return checks


def flatness(result_path: Path, size_gb: float, ours: h.Summary) -> tuple[bool, str] | None:
    """Our peak RSS against the same variant in the largest smaller-size untagged result, if one exists."""
    best: tuple[float, dict] | None = None
    for p in h.OUT.glob("results-*.json"):
        if p == result_path or not p.stem.removeprefix("results-").replace("_", "").isdigit():
            continue  # tagged runs (smoke tests, experiments) are not baselines
        try:
            data = json.loads(p.read_text())
        except ValueError:
            continue
        prev = next((v for v in data.get("variants", []) if v["variant"] == ours.variant), None)
        if prev and data.get("size_gb") and data["size_gb"] < size_gb and (best is None or data["size_gb"] > best[0]):
            best = (data["size_gb"], prev)
    if best is None:
        return None
    prev_gb, prev = best
    ratio_tree = ours.peak_tree_rss / prev["peak_tree_rss_bytes"]
    ratio_proc = ours.max_proc_rss / prev["max_proc_rss_bytes"]
    ok = ratio_tree <= FLATNESS_MAX_RATIO and ratio_proc <= FLATNESS_MAX_RATIO
    return ok, (
        f"{ours.variant} RSS flat from {prev_gb:g} GB to {size_gb:g} GB: tree {h.mb(prev['peak_tree_rss_bytes'])} -> "
        f"{h.mb(ours.peak_tree_rss)} MB (x{ratio_tree:.2f}), largest process {h.mb(prev['max_proc_rss_bytes'])} -> "
        f"{h.mb(ours.max_proc_rss)} MB (x{ratio_proc:.2f}); limit x{FLATNESS_MAX_RATIO}"
    )


def details(by: dict[str, h.Summary], profiles: list[OursConfig]) -> list[str]:
    floor, seed, ours, dag = by.get("floor"), by.get("seed"), by.get("ours"), by.get("dagster")
    out = []
    if seed:
        out.append(
            f"seed stages (median): pg_dump|gzip {seed.median_stage(0):.2f}s + upload_file {seed.median_stage(1):.2f}s"
        )
    if ours:
        ex = ours.last
        out.append(
            f"ours inside the child (last run): import {ex['import_seconds']:.2f}s, backup_postgres "
            f"{ex['child_seconds']:.2f}s (manifest dump_seconds {ex['inner_dump_seconds']})"
        )
    if dag and dag.last.get("steps"):
        out.append("dagster steps (last run): " + ", ".join(f"{k} {v:.2f}s" for k, v in dag.last["steps"].items()))
    moto_lines = []
    for s in (seed, ours, *[by.get(c.label()) for c in profiles]):
        if s and s.last.get("complete_seconds") is not None:
            moto_lines.append(f"{s.variant} {s.median_extra('complete_seconds'):.2f}s")
    if moto_lines:
        out.append("moto CompleteMultipartUpload, client-side wall (median): " + ", ".join(moto_lines))
    if ours and floor:
        adj = statistics.median(r.wall_s - r.extra["complete_seconds"] for r in ours.runs)
        out.append(
            f"(info) ours without moto's CompleteMultipartUpload: {adj:.2f}s = {adj / floor.wall_s:.2f}x floor"
            + (f", {adj / seed.wall_s:.2f}x seed" if seed else "")
        )
    for s in (ours, dag):
        if s and floor and len(s.runs) > 1:
            out.append(
                f"(info) best-of-{len(s.runs)} (robust when other sessions load the machine): {s.variant} "
                f"{s.wall_min:.2f}s = {s.wall_min / floor.wall_min:.2f}x floor's best"
                + (f", {s.wall_min / seed.wall_min:.2f}x seed's best" if seed else "")
            )
    if profiles:
        out += ["", "profile (targets: <=1.3x floor, <=0.5x seed, stored <= seed, RSS < 300 MB):"]
        for cfg in [OursConfig(), *profiles]:
            s = by.get(cfg.label())
            if not s:
                continue
            verdict = "".join("P" if ok else "F" for ok, _ in evaluate(s, floor, seed))
            c = s.median_extra("complete_seconds") or 0.0
            line = f"  {s.variant:<26} {s.wall_s:6.2f}s"
            if floor:
                line += (
                    f"  x floor {s.wall_s / floor.wall_s:.2f} (w/o moto complete {(s.wall_s - c) / floor.wall_s:.2f})"
                )
            if seed:
                line += f"  x seed {s.wall_s / seed.wall_s:.2f}  stored/seed {s.stored_bytes / seed.stored_bytes:.3f}"
            out.append(line + f"  RSS {h.mb(s.peak_tree_rss)} MB  cpu {s.cpu_s:.1f}s  [{verdict}]")
    return out


# ============================================================================================= main


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--build-only", action="store_true", help="build/reuse the database, measure nothing")
    p.add_argument("--gen-jobs", type=int, default=2, help="parallel generator sessions")
    p.add_argument("--gen-batch", type=int, default=20000, help="rows per INSERT batch")
    p.add_argument("--via-dagster", action="store_true", help="shorthand for --variants floor,seed,dagster")
    p.add_argument(
        "--profile",
        nargs="?",
        const="default",
        default=None,
        help="also run ours with other settings: 'level=1,threads=-1;level=3,threads=0;...' "
        "(keys: level, threads, chunk_mb, part_mb, local); no value = a small default grid",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up pg_dump")
    p.add_argument("--partition", default=h.yesterday_utc(), help="partition key (default: yesterday, UTC)")


def main(argv: list[str]) -> int:
    args = h.parse_args(__doc__, argv, variants=VARIANTS, more=options)
    if args.via_dagster:
        args.variant_list = ["floor", "seed", "dagster"]
    s = h.Session(args, "postgres-backup")
    info = h.ensure_database(s.pg, h.BACKUP_SHAPE, args.size_gb, rebuild=args.rebuild, jobs=args.gen_jobs,
                             batch=args.gen_batch)  # fmt: skip
    db = info["database"]
    info.update(h.table_stats(s.pg, db))
    h.log(
        f"{db}: {info['db_bytes'] / h.GiB:.2f} GiB; heap {h.mb(info['heap_bytes'])} MB, toast "
        f"{h.mb(info['toast_bytes'])} MB, indexes {h.mb(info['index_bytes'])} MB, ~{info['avg_row_bytes']} B/row"
    )
    if args.build_only:
        return 0
    profiles = []
    if args.profile:
        spec = DEFAULT_PROFILE if args.profile == "default" else args.profile
        profiles = [OursConfig.parse(x) for x in spec.split(";") if x.strip()]
    if not args.no_warmup:
        h.log("warm-up: unmeasured pg_dump -Fc -Z0 > /dev/null (page cache)")
        s.measure("warmup", h.pg_dump_floor(s.pg, db))

    with h.MotoServer(s.workdir / "moto.log") as moto:
        buckets = {name: moto.new_bucket(f"cbd-bench-{name}") for name in ("seed", "ours", "dagster")}
        plan = []
        if s.wants("floor"):
            plan.append(("floor", lambda: variant_floor(s, db)))
        if s.wants("seed"):
            plan.append(("seed", lambda: variant_seed(s, db, moto, buckets["seed"])))
        if s.wants("ours"):
            plan.append(("ours", lambda: variant_ours(s, db, moto, buckets["ours"], OursConfig())))
        if s.wants("dagster"):
            plan.append(("dagster", lambda: variant_dagster(s, db, moto, buckets["dagster"])))
        for cfg in profiles:
            plan.append((cfg.label(), lambda cfg=cfg: variant_ours(s, db, moto, buckets["ours"], cfg)))

        def empty_buckets() -> None:
            for bucket in buckets.values():
                moto.empty(bucket)

        summaries = s.interleave(plan, moto=moto, after_each=empty_buckets)
        moto_rss = moto.rss()

    by = {x.variant: x for x in summaries}
    floor, seed = by.get("floor"), by.get("seed")
    result_path = h.OUT / f"results-{h.size_label(args.size_gb)}{args.tag}.json"
    lines = s.header(
        f"PostgreSQL backup benchmark: {db} ({info['db_bytes'] / h.GiB:.2f} GiB pg_database_size, "
        f"{info['rows_estimate']:,} rows)"
    )
    measured = next((x for x in (by.get("ours"), by.get("dagster")) if x and x.last.get("raw_bytes")), None)
    if measured:
        raw = measured.last["raw_bytes"]
        lines.append(
            f"pg_dump -Fc -Z0 stream: {raw:,} bytes; zstd ratio {raw / measured.stored_bytes:.2f}"
            + (f", seed gzip (plain SQL) {seed.stored_bytes:,} bytes" if seed else "")
        )
    lines += ["", h.ratio_table(summaries, ["floor", "seed"]), ""]
    lines += details(by, profiles)
    lines.append(f"moto server RSS at the end (not counted): {h.mb(moto_rss)} MB")
    checks: list[tuple[bool, str]] = []
    for name in ("ours", "dagster"):
        if name in by:
            checks += evaluate(by[name], floor, seed, TARGET_DAGSTER_VS_FLOOR if name == "dagster" else TARGET_VS_FLOOR)
            flat = flatness(result_path, args.size_gb, by[name])
            if flat:
                checks.append(flat)
    return s.finish(lines, summaries, checks, result_path, database=info, partition=args.partition)


# ==================================================================== child (the measured core call)


def child_ours(argv: list[str]) -> int:
    """backup_postgres into S3Storage (or LocalStorage), exactly as a caller of the core would."""
    t0 = time.monotonic()
    p = argparse.ArgumentParser()
    for name in ("--url", "--endpoint", "--bucket", "--prefix", "--series", "--partition", "--config", "--result"):
        p.add_argument(name, required=True)
    p.add_argument("--local-root")
    a = p.parse_args(argv)
    cfg = OursConfig(**json.loads(a.config))
    from cidadao_backup_dagster.core.artifacts import pipeline
    from cidadao_backup_dagster.core.artifacts.storage import DEFAULT_PART_SIZE, LocalStorage, S3Storage
    from cidadao_backup_dagster.core.postgres.backup import BackupSettings, backup_postgres
    from cidadao_backup_dagster.core.postgres.client import PgConnection

    if cfg.chunk_mb is not None:  # bench-only experiment: the module constant the pipeline reads per call
        pipeline.CHUNK = int(cfg.chunk_mb * h.MiB)
    client = h.s3_client(a.endpoint)
    calls = h.time_s3_calls(client)
    if cfg.local:
        storage = LocalStorage(a.local_root)
    else:
        part_size = cfg.part_mb * h.MiB if cfg.part_mb else DEFAULT_PART_SIZE
        storage = S3Storage(client, a.bucket, a.prefix, part_size=part_size)
    t1 = time.monotonic()
    manifest = backup_postgres(
        PgConnection.from_url(a.url),
        storage,
        series=a.series,
        partition=a.partition,
        settings=BackupSettings(zstd_level=cfg.zstd_level, zstd_threads=cfg.zstd_threads),
    )
    t2 = time.monotonic()
    import resource

    result = {"manifest": manifest.data, "import_seconds": t1 - t0, "child_seconds": t2 - t1, "s3_calls": calls}
    result["self_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(a.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_ours":
        sys.exit(child_ours(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
