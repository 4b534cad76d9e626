#!/usr/bin/env python3
"""Benchmark the daily investigations JSON export against the strategy's one-liner, in the same run.

Variants (each its own process tree, run interleaved `--repeats` times; wall time, CPU and peak RSS each):

  seed      the strategy/issue command, literally:
            psql -c "COPY (SELECT row_to_json(t) FROM investigations t) TO STDOUT" | gzip > file
            (every column of the table, one file, text-mode COPY).
  seed6     the same pipeline restricted to the strategy's six columns (like for like with ours).
  ours      `core.exports.export_partitions` for every day that holds rows: one REPEATABLE READ snapshot,
            per day an exact count(*) and a COPY streamed through SHA-256 -> gzip -> SHA-256 -> a local
            folder, then manifest.json (what one ranged run of `investigations_json_export` does).
  ours-1d   the same for one day only: peak RSS must not grow with the data (memory flat).

After timing, every output is checked (not timed): ours re-read with `inspect_export` (hash, CRC, one JSON
object per line), and the seed files parsed line by line, counting lines that are not valid JSON (text-mode
COPY doubles backslashes, so any value holding a quote or a backslash breaks its line).

The database (`cbd_bench_exports` on --admin-url) is built once: 2,000,000 investigations shaped like the
demo's (Portuguese text, nested jsonb), spread over 30 UTC days, 1 in 50 queries with quotes/backslashes.

Usage (repo root, project venv):
  .venv/bin/python bench/bench_exports.py                   # 2M rows, 3 interleaved repeats
  .venv/bin/python bench/bench_exports.py --rows 200000 --repeats 1   # a quick look
Results: printed, and bench/out/exports-<rows>.json (bench/out/ is git-ignored).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
MARKER = "cbd-bench-exports v1"  # bump when the generator changes: the database is rebuilt
FIRST_DAY = "2026-10-01"
DAYS = 30
TARGET = 1.2

sys.path.insert(0, str(REPO))

GENERATOR = """
INSERT INTO investigations (user_id, query, status, results, metadata, confidence, created_at, updated_at)
SELECT
    'user-' || (g % 997),
    (ARRAY['Contratos emergenciais de', 'Licitações com preço acima da média em', 'Pagamentos a fornecedores de',
           'Despesas com diárias em', 'Convênios suspeitos de', 'Aditivos contratuais em'])[1 + g % 6]
      || ' ' || (ARRAY['merenda escolar', 'saúde', 'obras públicas', 'transporte', 'tecnologia',
                       'segurança'])[1 + g % 5]
      || ' — ' || (ARRAY['Ministério da Saúde', 'Prefeitura de São Paulo', 'Governo do Pará', 'MEC',
                         'Ministério da Defesa', 'Câmara de Recife', 'DNIT'])[1 + g % 7]
      || CASE WHEN g % 50 = 0 THEN ' "urgente" (processo C:\\2024\\' || g || ')' ELSE '' END
      || ' (' || (2019 + g % 6) || ')',
    (ARRAY['completed', 'completed', 'completed', 'running', 'pending', 'failed', 'cancelled'])[1 + g % 7],
    jsonb_build_object(
        'anomalies', jsonb_build_array(
            jsonb_build_object('type', (ARRAY['price_deviation', 'vendor_concentration', 'temporal_pattern',
                                              'duplicate_contract'])[1 + g % 4],
                               'score', round((random())::numeric, 4),
                               'contract_id', 'CT-' || lpad((g::bigint * 7919 % 1000000)::text, 7, '0'),
                               'amount_brl', round((random() * 5000000)::numeric, 2))),
        'summary', 'Foram analisados ' || (g % 500 + 10) || ' contratos; ' || (g % 13) || ' com indícios.',
        'sources', jsonb_build_array('portal_transparencia', 'tce', 'siafi')),
    jsonb_build_object('agents', jsonb_build_array('Zumbi dos Palmares', 'Anita Garibaldi', 'Tiradentes'),
                       'duration_ms', (random() * 90000)::int, 'model', 'cidadao-ai-v' || (1 + g % 3),
                       'ip_hash', md5(g::text)),
    round((0.5 + random() / 2)::numeric, 4),
    timestamptz '{first}T00:00:00Z' + (g::double precision / {rows} * {days} * 86400) * interval '1 second',
    timestamptz '{first}T00:00:00Z' + (g::double precision / {rows} * {days} * 86400 + 600) * interval '1 second'
FROM generate_series(0, {rows} - 1) AS g
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -------------------------------------------------------------------------------------------- database


def ensure_database(admin_url: str, dbname: str, rows: int) -> str:
    from cidadao_backup_dagster.demo import SCHEMA

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=dbname)
    wanted = f"{MARKER} rows={rows}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        have = conn.execute("SELECT obj_description('investigations'::regclass)").fetchone()[0]
        if have == wanted:
            log(f"database {dbname} is ready ({wanted})")
            return url
        log(f"building {dbname}: {rows:,} investigations over {DAYS} days (once; about 30 s per million rows)")
        t0 = time.monotonic()
        conn.execute("TRUNCATE investigations")
        conn.execute(GENERATOR.format(first=FIRST_DAY, rows=rows, days=DAYS))
        conn.execute("VACUUM (ANALYZE) investigations")
        conn.execute(sql.SQL("COMMENT ON TABLE investigations IS {}").format(sql.Literal(wanted)))
        log(f"built in {time.monotonic() - t0:.0f} s")
    return url


# ----------------------------------------------------------------------------------------- measuring


def measured(label: str, argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `argv` to completion; wall time, user+sys CPU and the kernel's peak RSS of the largest process
    in its tree (wait4: what `/usr/bin/time -v` calls 'Maximum resident set size')."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    out, err = proc.stdout.read(), proc.stderr.read()  # small: the workers print one line
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{err.decode(errors='replace')[-3000:]}")
    return {
        "label": label,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "stdout": out.decode().strip(),
        "load": loadavg(),
    }


OURS = textwrap.dedent(
    """
    import json, sys, time
    from datetime import datetime, timedelta, UTC
    sys.path.insert(0, {repo!r})
    from cidadao_backup_dagster.core.exports.export import INVESTIGATIONS_COLUMNS, ExportSettings, ExportSpec
    from cidadao_backup_dagster.core.exports.export import export_partitions, iter_days
    from cidadao_backup_dagster.core.postgres.client import PgConnection
    from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
    conn = PgConnection.from_url({url!r})
    spec = ExportSpec("investigations", "jsonl", INVESTIGATIONS_COLUMNS, "created_at")
    start = datetime.fromisoformat({first!r}).replace(tzinfo=UTC)
    windows = list(iter_days(start, start + timedelta(days={days})))
    manifests = export_partitions(conn, LocalStorage({root!r}), spec, series=spec.series(conn.dbname, "daily"),
                                  windows=windows, settings=ExportSettings(gzip_level={level}))
    print(json.dumps({{"records": sum(m.data["contents"]["records"] for m in manifests),
                      "stored_bytes": sum(m.stored_bytes for m in manifests),
                      "raw_bytes": sum(m.raw_bytes for m in manifests), "files": len(manifests)}}))
    """
)


def ours(url: str, root: Path, days: int, level: int) -> list[str]:
    code = OURS.format(repo=str(REPO), url=url, first=FIRST_DAY, days=days, root=str(root), level=level)
    return [sys.executable, "-c", code]


def seed(url: str, out: Path, six_columns: bool) -> list[str]:
    source = (
        "(SELECT id, query, status, results, metadata, created_at FROM investigations)"
        if six_columns
        else "investigations"
    )
    copy = f"COPY (SELECT row_to_json(t) FROM {source} t) TO STDOUT"
    return ["bash", "-o", "pipefail", "-c", f'psql -X -q -d "$BENCH_URL" -c "{copy}" | gzip > "{out}"']


# ---------------------------------------------------------------------------------------- verifying


def verify_ours(root: Path) -> dict:
    from cidadao_backup_dagster.core.artifacts.manifest import Manifest
    from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
    from cidadao_backup_dagster.core.exports.export import inspect_export

    storage = LocalStorage(root)
    problems, records = [], 0
    for path in sorted(root.rglob("manifest.json")):
        manifest = Manifest(json.loads(path.read_text()))
        found = inspect_export(storage, manifest)
        problems += found.problems
        records += found.records or 0
        if manifest.data["contents"]["records"] != manifest.data["contents"]["source_rows"]:
            problems.append(f"{manifest.partition}: records != source_rows")
    return {"records": records, "problems": problems[:5]}


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


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gzip-level", type=int, default=6)
    parser.add_argument(
        "--admin-url", default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--database", default="cbd_bench_exports")
    parser.add_argument("--workdir", default=None, help="where outputs go (default: a temp folder, removed)")
    parser.add_argument("--skip-verify", action="store_true")
    args = parser.parse_args(argv)

    url = ensure_database(args.admin_url, args.database, args.rows)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cbd-bench-exports-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENCH_URL": url}
    psql_version = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    gzip_version = subprocess.run(["gzip", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    log(f"{psql_version}; {gzip_version}; {os.cpu_count()} cores; load {loadavg()}")

    runs: dict[str, list[dict]] = {"seed": [], "seed6": [], "ours": [], "ours-1d": []}
    try:
        for i in range(args.repeats):
            for label in runs:  # interleaved: a busy moment on the machine hits every variant alike
                target = work / f"{label}-{i}"
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()
                if label.startswith("seed"):
                    cmd = seed(url, target / "investigations.json.gz", six_columns=label == "seed6")
                else:
                    cmd = ours(url, target, 1 if label == "ours-1d" else DAYS, args.gzip_level)
                result = measured(label, cmd, env)
                runs[label].append(result)
                log(f"#{i + 1} {label:8s} {result['wall_s']:7.1f} s  cpu {result['cpu_s']:6.1f} s  "
                    f"rss {result['max_rss_mb']:6.1f} MB  load {result['load']}")  # fmt: skip
                if i < args.repeats - 1 or args.skip_verify:
                    continue
                if label.startswith("seed"):
                    result["verify"] = verify_seed(target / "investigations.json.gz")
                else:
                    result["verify"] = verify_ours(target)
                    result["export"] = json.loads(result["stdout"])
                log(f"   verified {label}: {result['verify']}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    med = {label: statistics.median(r["wall_s"] for r in rs) for label, rs in runs.items()}
    cpu = {label: statistics.median(r["cpu_s"] for r in rs) for label, rs in runs.items()}
    ratio_seed = med["ours"] / med["seed"]
    ratio_seed6 = med["ours"] / med["seed6"]
    per_repeat = [round(o["wall_s"] / s["wall_s"], 3) for o, s in zip(runs["ours"], runs["seed"], strict=True)]
    rss_all = max(r["max_rss_mb"] for r in runs["ours"])
    rss_day = max(r["max_rss_mb"] for r in runs["ours-1d"])
    summary = {
        "rows": args.rows,
        "days": DAYS,
        "gzip_level": args.gzip_level,
        "median_wall_s": med,
        "ratio_ours_vs_seed": round(ratio_seed, 3),
        "ratio_ours_vs_seed6": round(ratio_seed6, 3),
        "ratio_per_repeat_vs_seed": per_repeat,
        "cpu_ratio_ours_vs_seed": round(cpu["ours"] / cpu["seed"], 3),
        "median_cpu_s": cpu,
        "peak_rss_mb": {label: max(r["max_rss_mb"] for r in rs) for label, rs in runs.items()},
        "rss_all_days_vs_one_day": round(rss_all / rss_day, 3),
        "target": TARGET,
        "runs": runs,
        "machine": {"cores": os.cpu_count(), "psql": psql_version, "gzip": gzip_version},
    }
    OUT.mkdir(exist_ok=True)
    (OUT / f"exports-{args.rows}.json").write_text(json.dumps(summary, indent=2))

    last = {label: rs[-1] for label, rs in runs.items()}
    print(f"\nJSON export of {args.rows:,} investigations over {DAYS} days, {args.repeats} interleaved repeats "
          f"(median wall time; CPU and peak RSS of the process tree, server excluded)\n")  # fmt: skip
    print(f"{'variant':10s} {'wall s':>8s} {'cpu s':>7s} {'RSS MB':>7s} {'stored MB':>10s}  notes")
    for label, rs in runs.items():
        v = last[label].get("verify", {})
        stored = v.get("stored_bytes") or last[label].get("export", {}).get("stored_bytes")
        note = ""
        if "invalid_json_lines" in v:
            note = f"{v['lines']:,} lines, {v['invalid_json_lines']:,} not valid JSON"
        elif "records" in v:
            note = f"{v['records']:,} records re-read, {'OK' if not v['problems'] else v['problems']}"
        size = f"{stored / 1e6:10.1f}" if stored else f"{'-':>10s}"
        print(f"{label:10s} {med[label]:8.1f} {statistics.median(r['cpu_s'] for r in rs):7.1f} "
              f"{max(r['max_rss_mb'] for r in rs):7.1f} {size}  {note}")  # fmt: skip
    print(f"\nours / seed  (the issue's command)   = {ratio_seed:.2f}x   per repeat {per_repeat}   target <= {TARGET}x")
    print(f"ours / seed6 (same six columns)       = {ratio_seed6:.2f}x")
    print(f"CPU (client side) ours / seed         = {cpu['ours'] / cpu['seed']:.2f}x   (insensitive to other load)")
    print(f"peak RSS, all {DAYS} days / one day     = {rss_all:.0f} / {rss_day:.0f} MB ({rss_all / rss_day:.2f}x): "
          f"{'flat' if rss_all / rss_day < 1.25 else 'NOT flat'}")  # fmt: skip
    return 0 if ratio_seed <= TARGET else 1


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
