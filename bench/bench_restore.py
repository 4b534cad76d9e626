#!/usr/bin/env python3
"""PostgreSQL restore against its baselines, measured in the same run as whole processes.

  floor    createdb + `pg_restore --jobs 2` from a local, already uncompressed dump: the fastest a
           restore can be with these tools.
  stock    the stock pipeline an operator would script: download the .dump.zst from S3, `zstd -d`,
           createdb, `pg_restore --jobs 2`.
  dagster  what an operator runs: `dg launch -m cidadao_backup_dagster.definitions
           --job restore_postgres -c <config>` (fetch + SHA-256 + zstd -d, pg_restore --jobs 2 into a staging
           database, exact row counts of every table against the manifest, rename into place).

The reference backup is made once per run, unmeasured, by the operator's backup command (`dg launch
--assets postgres_daily_backup`) into a moto S3 bucket, from the investigations-like bench database.
Targets: dagster <= 1.3x floor and <= 1.0x stock (issue #16: the whole process, CLI included).

  .venv/bin/python bench/bench_restore.py --size-gb 1.0 --repeat 3
  .venv/bin/python bench/bench_restore.py --size-gb 0.05 --repeat 1    # smoke test
Results: bench/out/restore-<size><tag>.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
from bench_postgres_backup import dagster_backup_env  # noqa: E402

TARGET = 1.3
TARGET_VS_STOCK = 1.0
VARIANTS = "floor,stock,dagster"
JOBS = 2


def main(argv: list[str]) -> int:
    args = h.parse_args(__doc__, argv, variants=VARIANTS)
    s = h.Session(args, "restore")
    info = h.ensure_database(s.pg, h.BACKUP_SHAPE, args.size_gb, rebuild=args.rebuild)
    db = info["database"]
    with h.MotoServer(s.workdir / "moto.log") as moto:
        bucket = moto.new_bucket("cbd-bench-restore")
        env = dagster_backup_env(s, db, moto, bucket)
        h.log("reference backup (unmeasured): " + " ".join(h.dg_launch_assets("postgres_daily_backup")))
        s.dagster("reference backup", h.dg_launch_assets("postgres_daily_backup", partition=h.yesterday_utc()), env)
        manifest = moto.manifests(bucket)[-1]
        art, key = manifest["artifact"], f"bench/{manifest['artifact']['key']}"
        dump = s.workdir / "reference.dump"
        subprocess.run(h.s3_get(moto.endpoint, bucket, key, s.workdir / "reference.dump.zst"), env=s.env, check=True)
        subprocess.run(["zstd", "-d", "-q", "-f", "--rm", str(s.workdir / "reference.dump.zst"), "-o", str(dump)],
                       check=True)  # fmt: skip
        tables = manifest["contents"].get("tables", {})
        h.log(
            f"reference backup: {art['stored_bytes']:,} B stored, {art['raw_bytes']:,} B archive, {len(tables)} "
            f"tables, {sum(tables.values()):,} rows"
        )
        config = s.workdir / "restore.yaml"

        def target() -> str:
            return f"cbd_bench_restore_{uuid.uuid4().hex[:6]}"

        def floor() -> h.Run:
            name = target()
            try:
                return h.Run([s.measure("floor", h.pg_restore_file(s.pg, dump, name, JOBS))])
            finally:
                h.drop_database(s.pg, name)

        def stock() -> h.Run:
            name = target()
            try:
                argv = h.stock_restore(s.pg, moto.endpoint, bucket, key, s.workdir, name, JOBS)
                return h.Run([s.measure("stock", argv)])
            finally:
                h.drop_database(s.pg, name)

        def dagster() -> h.Run:
            name = target()
            ops = {"restore_postgres_op": {"config": {"target_database": name, "jobs": JOBS}}}
            config.write_text(json.dumps({"ops": ops}))  # JSON is YAML
            try:
                run = s.dagster("dagster", h.dg_launch_job("restore_postgres", config), env)
            finally:
                h.drop_database(s.pg, name)
            meta = run.extra["outputs"].get("restore_postgres_op", {})
            run.extra.update(
                job_s=run.extra["steps"].get("restore_postgres_op"),
                **{k: meta.get(k) for k in ("fetch_s", "restore_s", "verify_s")},
            )
            return run

        plan = [(name, fn) for name, fn in (("floor", floor), ("stock", stock), ("dagster", dagster)) if s.wants(name)]
        summaries = s.interleave(plan, moto=moto)
    dump.unlink(missing_ok=True)

    by = {x.variant: x for x in summaries}
    lines = s.header(
        f"restore benchmark: {db} ({info['db_bytes'] / h.GiB:.2f} GiB), reference backup {art['stored_bytes']:,} B "
        f"stored, {art['raw_bytes']:,} B archive"
    )
    lines += ["", h.ratio_table(summaries, ["floor", "stock"]), ""]
    checks = []
    dag, floor_s = by.get("dagster"), by.get("floor")
    if dag:
        med = {k: dag.median_extra(k) for k in ("job_s", "fetch_s", "restore_s", "verify_s")}
        lines.append(
            "dagster restore_postgres_op step (median): "
            + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in med.items() if v is not None)
            + f"; the rest of the {dag.wall_s:.2f}s is the CLI, code location load, instance and event log"
        )
        if floor_s and med["job_s"]:
            lines.append(f"(info) restore_postgres_op step alone = {med['job_s'] / floor_s.wall_s:.2f}x floor")
    if dag and floor_s:
        checks.append(h.ratio_check(dag, floor_s, TARGET))
    if dag and by.get("stock"):
        checks.append(h.ratio_check(dag, by["stock"], TARGET_VS_STOCK))
    result = h.OUT / f"restore-{h.size_label(args.size_gb)}{args.tag}.json"
    return s.finish(lines, summaries, checks, result, database=info, reference_backup=art)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
