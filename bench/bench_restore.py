#!/usr/bin/env python3
"""Benchmark `restore_postgres` against plain `pg_restore --jobs 2` of the same dump, in one run.

  baseline  `createdb` + `pg_restore --jobs 2 --dbname <new> backup.dump` from a local, already
            uncompressed file (the fastest a restore can be with these tools).
  ours      the `restore_postgres` Dagster job (execute_in_process in a child process) restoring the same
            backup from local backup storage: fetch + SHA-256 + zstd -d to a temp file, createdb,
            `pg_restore --jobs 2`, then exact row counts of every table against the manifest.

The reference backup is made once from the benchmark database (`cbd_bench_1gb`, built by
bench_postgres_backup.py --build-only). Runs are interleaved; the table shows medians.

Usage (repo root): .venv/bin/python bench/bench_restore.py [--size-gb 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_postgres_backup import run_measured, size_label  # noqa: E402

TARGET = 1.3
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def psql(*sql: str) -> None:
    for statement in sql:
        subprocess.run(["psql", ADMIN, "-qXc", statement], check=True, capture_output=True)


def child(argv: list[str]) -> int:
    """Runs inside the measured process: the restore_postgres job on the reference backup."""
    target, storage, source = argv
    os.environ.update(BACKUP_STORAGE_URL=f"file://{storage}", DATABASE_URL=source)
    import dagster as dg

    from cidadao_backup_dagster.definitions import build_defs

    t0 = time.perf_counter()
    result = (
        build_defs()
        .resolve_job_def("restore_postgres")
        .execute_in_process(
            run_config={
                "ops": {"restore_postgres_op": {"config": {"target_database": target, "jobs": 2}}},
                "loggers": {"console": {"config": {"log_level": "WARNING"}}},
            },
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    )
    out = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    meta = {k: v.value for k, v in out[0].event_specific_data.metadata.items()} if out else {}
    print(json.dumps({"success": result.success, "job_s": time.perf_counter() - t0, **meta}))
    return 0 if result.success else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    db = f"cbd_bench_{size_label(args.size_gb)}gb"
    source = f"postgresql://postgres@127.0.0.1:5432/{db}"
    work = HERE / "out" / "restore-work"
    storage = work / "storage"
    work.mkdir(parents=True, exist_ok=True)

    from cidadao_backup_dagster.core.artifacts.manifest import valid_manifests
    from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
    from cidadao_backup_dagster.core.postgres.backup import backup_postgres
    from cidadao_backup_dagster.core.postgres.client import PgConnection

    store, series = LocalStorage(storage), f"postgres/{db}/daily"
    if not valid_manifests(store, series):
        print(f"making the reference backup of {db} ...", flush=True)
        backup_postgres(PgConnection.from_url(source), store, series=series, partition="2026-01-01")
    (manifest,) = valid_manifests(store, series)[-1:]
    dump = work / "reference.dump"
    if not dump.exists() or dump.stat().st_size != manifest.raw_bytes:
        subprocess.run(["zstd", "-d", "-q", "-f", str(storage / manifest.artifact_key), "-o", str(dump)], check=True)
    print(
        f"reference backup: {manifest.stored_bytes:,} B stored, {manifest.raw_bytes:,} B archive, "
        f"{len(manifest.tables)} tables, {sum(manifest.tables.values()):,} rows",
        flush=True,
    )

    runs: dict[str, list] = {"baseline": [], "ours": []}
    for i in range(args.repeat):
        name = f"cbd_bench_restore_{uuid.uuid4().hex[:6]}"
        base = run_measured(
            "baseline",
            ["bash", "-c", f"createdb -h 127.0.0.1 -U postgres {name} && "
             f"pg_restore -h 127.0.0.1 -U postgres --jobs 2 --exit-on-error --dbname {name} {dump}"],
        )  # fmt: skip
        psql(f"DROP DATABASE {name} WITH (FORCE)")
        name = f"cbd_bench_restore_{uuid.uuid4().hex[:6]}"
        with open(work / "child.json", "w") as out:
            ours = run_measured("ours", [sys.executable, __file__, "--child", name, str(storage), source], stdout=out)
        info = json.loads((work / "child.json").read_text().strip().splitlines()[-1])
        psql(f"DROP DATABASE {name} WITH (FORCE)")
        runs["baseline"].append(base)
        runs["ours"].append((ours, info))
        print(
            f"[{i + 1}/{args.repeat}] baseline {base.wall_s:.2f}s; ours {ours.wall_s:.2f}s (job {info['job_s']:.2f}s: "
            f"fetch {info['fetch_s']:.2f} restore {info['restore_s']:.2f} verify {info['verify_s']:.2f}), "
            f"RSS {ours.peak_tree_rss / 2**20:.0f} MB",
            flush=True,
        )

    base_wall = statistics.median(m.wall_s for m in runs["baseline"])
    ours_wall = statistics.median(m.wall_s for m, _ in runs["ours"])
    job_wall = statistics.median(info["job_s"] for _, info in runs["ours"])
    rss = max(m.peak_tree_rss for m, _ in runs["ours"]) / 2**20
    print(f"\nrestore benchmark: {db}, {args.repeat} interleaved repeats, medians, {os.cpu_count()} cores")
    print(f"{'variant':<34}{'wall s':>8}{'x baseline':>12}{'peak RSS MB':>13}")
    print(f"{'pg_restore --jobs 2 (local file)':<34}{base_wall:>8.2f}{1.0:>12.2f}{'-':>13}")
    print(f"{'restore_postgres (process)':<34}{ours_wall:>8.2f}{ours_wall / base_wall:>12.2f}{rss:>13.0f}")
    print(f"{'restore_postgres (job only)':<34}{job_wall:>8.2f}{job_wall / base_wall:>12.2f}{'':>13}")
    ok = ours_wall <= TARGET * base_wall
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict}  restore_postgres {ours_wall:.2f}s <= {TARGET}x pg_restore ({TARGET * base_wall:.2f}s)")
    (HERE / "out" / f"restore-{size_label(args.size_gb)}.json").write_text(
        json.dumps({"baseline_s": base_wall, "ours_s": ours_wall, "job_s": job_wall, "rss_mb": rss}, indent=2)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
