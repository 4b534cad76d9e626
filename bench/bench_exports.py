#!/usr/bin/env python3
"""The daily investigations JSON export against the strategy's one-liner, measured in the same run.

  seed     the strategy/issue command, literally (every column of the table, one file, text-mode COPY):
           psql -c "COPY (SELECT row_to_json(t) FROM investigations t) TO STDOUT" | gzip > file
  seed6    the same pipeline restricted to the strategy's six columns (like for like with ours).
  ours     a child process calling `core.exports.export_partitions` for every day that holds rows: one
           REPEATABLE READ snapshot, per day an exact count(*) and a COPY streamed through SHA-256 -> gzip ->
           SHA-256 -> a local folder, then the manifest.
  ours-1d  the same for one day only: peak RSS must not grow with the data (memory flat).
  dagster  what an operator runs: `dg launch -m cidadao_backup_dagster.definitions
           --assets investigations_json_export --partition-range <first>...<last>` (one run, checks included).

After timing (not timed), every output of the last repeat is checked: ours and dagster re-read with
`inspect_export` (hash, CRC, one JSON object per line), the seed files parsed line by line, counting lines
that are not valid JSON (text-mode COPY doubles backslashes, so a value holding a quote or a backslash breaks
its line). The database is the application's schema, rows over 30 UTC days (about 740 B per row: --size-gb
1.4 is about 2,000,000 rows; --rows sets the count). Target: <= 1.2x seed.

  .venv/bin/python bench/bench_exports.py --rows 2000000 --repeat 3
  .venv/bin/python bench/bench_exports.py --size-gb 0.05 --repeat 1     # smoke test
Results: bench/out/exports-<rows><tag>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402

TARGET = 1.2
VARIANTS = "seed,seed6,ours,ours-1d,dagster"
SIX_COLUMNS = "(SELECT id, query, status, results, metadata, created_at FROM investigations)"


def days(n: int) -> tuple[str, str]:
    """First and last partition key of the first `n` days of the generated data."""
    first = dt.date.fromisoformat(h.EXPORT_FIRST_DAY)
    return first.isoformat(), (first + dt.timedelta(days=n - 1)).isoformat()


# ========================================================================================= verifying


def verify_ours(root: Path) -> dict:
    from cidadao_backup_dagster.core.artifacts.manifest import Manifest
    from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
    from cidadao_backup_dagster.core.exports.inspect import inspect_export

    storage = LocalStorage(root)
    problems, records, stored = [], 0, 0
    for path in sorted(root.rglob("manifest*.json")):
        manifest = Manifest(json.loads(path.read_text()))
        found = inspect_export(storage, manifest)
        problems += found.problems
        records += found.records or 0
        stored += manifest.stored_bytes
        if manifest.data["contents"]["records"] != manifest.data["contents"]["source_rows"]:
            problems.append(f"{manifest.partition}: records != source_rows")
    return {"records": records, "stored_bytes": stored, "problems": problems[:5]}


def verify_seed(path: Path) -> dict:
    lines = invalid = 0
    with gzip.open(path, "rb") as f:
        for line in f:
            lines += 1
            try:
                json.loads(line)
            except ValueError:
                invalid += 1
    return {"lines": lines, "invalid_json_lines": invalid, "stored_bytes": path.stat().st_size}


# ============================================================================================= main


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=None, help="number of investigations (default: from --size-gb)")
    p.add_argument("--gzip-level", type=int, default=6)


def main(argv: list[str]) -> int:
    args = h.parse_args(__doc__, argv, size_gb=1.4, variants=VARIANTS, more=options)
    s = h.Session(args, "exports")
    info = h.ensure_database(s.pg, h.export_shape(), args.size_gb, rows=args.rows, rebuild=args.rebuild)
    db, url = info["database"], s.pg.url(info["database"])
    rows = int(info["comment"].split(" rows=")[1].split()[0])
    env = {**s.env, "BENCH_URL": url}
    versions = [subprocess.run([t, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
                for t in ("psql", "gzip")]  # fmt: skip
    h.log(f"{db}: {rows:,} investigations over {h.EXPORT_DAYS} days; {'; '.join(versions)}")
    out = s.workdir / "out"
    last = args.repeat

    def target(label: str) -> Path:
        path = out / label
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    counter: dict[str, int] = {}

    def verified(label: str, run: h.Run, check) -> h.Run:
        counter[label] = counter.get(label, 0) + 1
        if counter[label] == last:  # the last repeat's output is checked, untimed
            run.extra["verify"] = check()
            h.log(f"   verified {label}: {run.extra['verify']}")
        run.stored_bytes = run.extra.get("verify", {}).get("stored_bytes") or run.stored_bytes
        return run

    def seed(label: str, source: str) -> h.Run:
        file = target(label) / "investigations.json.gz"
        run = h.Run([s.measure(label, h.psql_json_gzip(source, file), env=env)], stored_bytes=None)
        run.stored_bytes = file.stat().st_size
        return verified(label, run, lambda: verify_seed(file))

    def ours(label: str, n: int) -> h.Run:
        root = target(label)
        argv = [sys.executable, str(Path(__file__).resolve()), "_ours", url, str(root), str(n), str(args.gzip_level)]
        with open(s.workdir / "ours.json", "w") as f:
            run = h.Run([s.measure(label, argv, stdout=f)])
        run.extra["export"] = json.loads((s.workdir / "ours.json").read_text())
        run.stored_bytes = run.extra["export"]["stored_bytes"]
        return verified(label, run, lambda: verify_ours(root))

    def dagster() -> h.Run:
        root = target("dagster")
        first, last_day = days(h.EXPORT_DAYS)
        env = {
            "DATABASE_URL": url,
            "BACKUP_STORAGE_URL": f"file://{root}",
            "BACKUP_PARTITIONS_START": h.EXPORT_FIRST_DAY,
            "EXPORT_GZIP_LEVEL": str(args.gzip_level),
        }
        argv = h.dg_launch_assets("investigations_json_export", partition_range=f"{first}...{last_day}")
        return verified("dagster", s.dagster("dagster", argv, env), lambda: verify_ours(root))

    plan = [
        ("seed", lambda: seed("seed", "investigations")),
        ("seed6", lambda: seed("seed6", SIX_COLUMNS)),
        ("ours", lambda: ours("ours", h.EXPORT_DAYS)),
        ("ours-1d", lambda: ours("ours-1d", 1)),
        ("dagster", dagster),
    ]
    try:
        summaries = s.interleave([(name, fn) for name, fn in plan if s.wants(name)])
    finally:
        shutil.rmtree(out, ignore_errors=True)

    by = {x.variant: x for x in summaries}
    lines = s.header(
        f"JSON export benchmark: {rows:,} investigations over {h.EXPORT_DAYS} days in {db} "
        f"({info['db_bytes'] / h.GiB:.2f} GiB), gzip level {args.gzip_level}"
    )
    lines += ["", h.ratio_table(summaries, ["seed", "seed6"]), ""]
    for x in summaries:
        v = x.last.get("verify", {})
        if "invalid_json_lines" in v:
            lines.append(f"{x.variant}: {v['lines']:,} lines, {v['invalid_json_lines']:,} not valid JSON")
        elif "records" in v:
            raw = x.last.get("export", {}).get("raw_bytes")
            lines.append(
                f"{x.variant}: {v['records']:,} records re-read, {'OK' if not v['problems'] else v['problems']}"
                + (f" ({raw / 1e6:,.1f} MB of JSON before gzip)" if raw else "")
            )
    checks = []
    seed_s, ours_s, day = by.get("seed"), by.get("ours"), by.get("ours-1d")
    if seed_s and ours_s:
        per_repeat = [round(o.wall_s / b.wall_s, 3) for o, b in zip(ours_s.runs, seed_s.runs, strict=True)]
        lines.append(
            f"ours / seed per repeat {per_repeat}; CPU (client side) ours / seed = "
            f"{ours_s.cpu_s / max(seed_s.cpu_s, 1e-9):.2f}x (insensitive to other load)"
        )
    if ours_s and day:
        ratio = ours_s.max_proc_rss / day.max_proc_rss
        lines.append(
            f"peak RSS (largest process), all {h.EXPORT_DAYS} days / one day = {h.mb(ours_s.max_proc_rss)} / "
            f"{h.mb(day.max_proc_rss)} MB ({ratio:.2f}x): {'flat' if ratio < 1.25 else 'NOT flat'}"
        )
    if by.get("dagster") and by["dagster"].last.get("steps"):
        steps = by["dagster"].last["steps"]
        lines.append("dagster steps (last run): " + ", ".join(f"{k} {v:.2f}s" for k, v in steps.items()))
    for name in ("ours", "dagster"):
        if name in by and seed_s:
            checks.append(h.ratio_check(by[name], seed_s, TARGET))
    result = h.OUT / f"exports-{rows}{args.tag}.json"
    return s.finish(lines, summaries, checks, result, database=info, rows=rows, days=h.EXPORT_DAYS,
                    gzip_level=args.gzip_level, tools=versions)  # fmt: skip


# ==================================================================== child (the measured core call)


def child_ours(url: str, root: str, n: str, level: str) -> int:
    from datetime import UTC, datetime, timedelta

    from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
    from cidadao_backup_dagster.core.exports.export import export_partitions
    from cidadao_backup_dagster.core.exports.spec import INVESTIGATIONS_COLUMNS, ExportSettings, ExportSpec, iter_days
    from cidadao_backup_dagster.core.postgres.client import PgConnection

    conn = PgConnection.from_url(url)
    spec = ExportSpec("investigations", "jsonl", INVESTIGATIONS_COLUMNS, "created_at")
    start = datetime.fromisoformat(h.EXPORT_FIRST_DAY).replace(tzinfo=UTC)
    windows = list(iter_days(start, start + timedelta(days=int(n))))
    manifests = export_partitions(
        conn, LocalStorage(root), spec, series=spec.series(conn.dbname, "daily"), windows=windows,
        settings=ExportSettings(gzip_level=int(level)),
    )  # fmt: skip
    print(
        json.dumps(
            {
                "records": sum(m.data["contents"]["records"] for m in manifests),
                "stored_bytes": sum(m.stored_bytes for m in manifests),
                "raw_bytes": sum(m.raw_bytes for m in manifests),
                "files": len(manifests),
            }
        )
    )
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if len(sys.argv) > 1 and sys.argv[1] == "_ours":
        sys.exit(child_ours(*sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
