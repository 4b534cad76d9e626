#!/usr/bin/env python3
"""Fixed cost of an operator's run: what a scheduled or CLI backup costs beyond the work, on tiny data.

  floor        `pg_dump -Fc -Z0 <db> > /dev/null` of a tiny database (--size-gb, default 0.01): the work.
  load         `python -c "import cidadao_backup_dagster.definitions"`: interpreter, imports, definitions.
  dagster      `dg launch -m cidadao_backup_dagster.definitions --assets postgres_daily_backup --partition
               <yesterday>` into a local folder (file://: no moto), checks included, a fresh DAGSTER_HOME.
  redis-floor  `redis-cli --rdb file` of a small throwaway redis-server (--keys, default 10,000).
  redis        `dg launch ... --assets redis_snapshot --partition <previous hour>` into a local folder.

Targets (issue #16): each run's fixed cost (run minus its floor) <= 5 s wall and <= 5 CPU-seconds (user+sys
of the whole process tree, pg_dump and redis SYNC client included).
After the timed rounds, unmeasured: `python -X importtime` of the code location (slowest imports) and a
cProfile of one `dg launch` backup, by phase, to show where the fixed cost goes.

  .venv/bin/python bench/bench_fixed_cost.py                     # 3 interleaved repeats
  .venv/bin/python bench/bench_fixed_cost.py --repeat 5 --variants floor,load,dagster
Results: bench/out/fixed-cost-<size><tag>.json.
"""

from __future__ import annotations

import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
from bench_redis_snapshot import Redis, populate  # noqa: E402

TARGET_WALL_S = 5.0
TARGET_CPU_S = 5.0
VARIANTS = "floor,load,dagster,redis-floor,redis"
# cProfile phases of one `dg launch` run: (label, file fragment, function); cumulative seconds of each.
PHASES = [
    ("dg CLI: command tree (dagster, dg imports)", "dagster_dg_cli/cli/__init__.py", "_define_commands"),
    ("code location: import + build the definitions", "cidadao_backup_dagster/definitions.py", "<module>"),
    ("  of which build_defs()", "cidadao_backup_dagster/definitions.py", "build_defs"),
    ("instance: DAGSTER_HOME storage (sqlite)", "dagster/_core/instance/factory.py", "create_instance_from_ref"),
    ("run: execute_job (plan, steps, events)", "dagster/_core/execution/api.py", "execute_job"),
    ("  of which the steps' own code", "execution/plan/execute_step.py", "core_dagster_event_sequence_for_step"),
    ("  of which event log writes", "dagster/_core/instance/methods/event_methods.py", "handle_new_event"),
]  # fmt: skip


def local_store(s: h.Session) -> Path:
    return Path(tempfile.mkdtemp(prefix="store-", dir=s.workdir))


def variant_dagster(s: h.Session, label: str, argv: list[str], env: dict[str, str]) -> h.Run:
    store = local_store(s)  # a fresh folder each run: nothing stored is ever overwritten
    try:
        return s.dagster(label, argv, {**env, "BACKUP_STORAGE_URL": f"file://{store}"})
    finally:
        shutil.rmtree(store, ignore_errors=True)


def variant_redis_floor(s: h.Session, redis: Redis) -> h.Run:
    rdb = s.workdir / "floor.rdb"
    try:
        return h.Run([s.measure("redis-floor", h.redis_cli_rdb(redis.port, rdb))])
    finally:
        rdb.unlink(missing_ok=True)


def fixed_cost_checks(by: dict[str, h.Summary], run: str, floor: str) -> list[tuple[bool, str]]:
    if run not in by or floor not in by:
        return []
    r, f = by[run], by[floor]
    wall, cpu = r.wall_s - f.wall_s, r.cpu_s - f.cpu_s
    return [
        (wall <= TARGET_WALL_S, f"{run} fixed cost {wall:.2f}s wall ({r.wall_s:.2f}s - {floor} {f.wall_s:.2f}s) "
                                f"<= {TARGET_WALL_S:g}s"),
        (cpu <= TARGET_CPU_S, f"{run} fixed cost {cpu:.2f} CPU-s ({r.cpu_s:.2f} - {floor} {f.cpu_s:.2f}) "
                              f"<= {TARGET_CPU_S:g}"),
    ]  # fmt: skip


# ============================================================================= where the time goes


def slowest_imports(env: dict[str, str], top: int = 12) -> list[str]:
    """`python -X importtime` of the code location: the slowest imports by cumulative time, outermost first."""
    argv = [sys.executable, "-X", "importtime", *h.code_location_load()[1:]]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=h.OUT)
    rows = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(2)) / 1e6, len(m.group(3)) // 2, m.group(4)))
    total = max((r[0] for r in rows), default=0.0)
    lines = [f"code location imports (python -X importtime, one run): {total:.2f}s in all; slowest:"]
    for cum, depth, name in sorted(rows, reverse=True)[1 : top + 1]:
        lines.append(f"  {cum:6.2f}s  {'  ' * min(depth, 6)}{name}")
    return lines


def profile_run(s: h.Session, argv: list[str], env: dict[str, str]) -> list[str]:
    """One unmeasured `dg launch` under cProfile, summarized by PHASES (cumulative seconds, with the
    profiler's own overhead: compare phases with each other, not with the timed rounds)."""
    prof, home, store = s.workdir / "dg-launch.prof", h.dagster_home(s.workdir), local_store(s)
    try:
        run_env = {**env, "DAGSTER_HOME": str(home), "BACKUP_STORAGE_URL": f"file://{store}"}
        done = subprocess.run(
            [sys.executable, "-m", "cProfile", "-o", str(prof), *argv],
            env=run_env, capture_output=True, text=True, cwd=home,
        )  # fmt: skip
        if done.returncode != 0:
            return [f"cProfile run failed (exit {done.returncode}): {done.stderr[-500:]}"]
        stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
        prof.unlink(missing_ok=True)
    total = max(v[3] for v in stats.values())
    lines = [f"where one dg launch backup spends its time (cProfile, {total:.2f}s in all with the profiler on):"]
    for label, path, func in PHASES:
        found = [v[3] for (file, _, name), v in stats.items() if file.endswith(path) and name == func]
        lines.append(f"  {max(found):6.2f}s  {label}" if found else f"  {'-':>6}   {label} (not found)")
    return lines


# ============================================================================================= main


def options(p) -> None:
    p.add_argument("--keys", type=int, default=10_000, help="keys in the Redis instance (default 10,000)")
    p.add_argument("--no-profile", action="store_true", help="skip the unmeasured importtime and cProfile runs")


def main(argv: list[str]) -> int:
    args = h.parse_args(__doc__, argv, size_gb=0.01, variants=VARIANTS, more=options)
    s = h.Session(args, "fixed-cost")
    info = h.ensure_database(s.pg, h.BACKUP_SHAPE, args.size_gb, rebuild=args.rebuild)
    db = info["database"]
    pg_env = {"DATABASE_URL": s.pg.url(db), "BACKUP_EXPECTED_SIZE_MB": "off"}
    backup = h.dg_launch_assets("postgres_daily_backup", partition=h.yesterday_utc())
    redis_dir = Path(tempfile.mkdtemp(prefix="cbd-bench-redis-"))
    redis = Redis(redis_dir) if any(s.wants(v) for v in ("redis", "redis-floor")) else None
    try:
        plan = []
        if s.wants("floor"):
            plan.append(("floor", lambda: h.Run([s.measure("floor", h.pg_dump_floor(s.pg, db))])))
        if s.wants("load"):
            load_env = {**s.env, **pg_env}  # run outside the checkout: PYTHONPATH chooses the code, as for dg
            plan.append(("load", lambda: h.Run([s.measure("load", h.code_location_load(), load_env, cwd=s.workdir)])))
        if s.wants("dagster"):
            plan.append(("dagster", lambda: variant_dagster(s, "dagster", backup, pg_env)))
        if redis:
            h.log(f"filling redis-server :{redis.port} with {args.keys:,} keys: {populate(redis, args.keys)}")
            snapshot = h.dg_launch_assets("redis_snapshot", partition=h.previous_hour_utc())
            if s.wants("redis-floor"):
                plan.append(("redis-floor", lambda: variant_redis_floor(s, redis)))
            if s.wants("redis"):
                plan.append(("redis", lambda: variant_dagster(s, "redis", snapshot, {"REDIS_URL": redis.url})))
        summaries = s.interleave(plan)
    finally:
        if redis:
            redis.stop()
        shutil.rmtree(redis_dir, ignore_errors=True)

    by = {x.variant: x for x in summaries}
    lines = s.header(f"Fixed cost of a run: {db} ({info['db_bytes'] / h.MiB:.1f} MiB), {args.keys:,} Redis keys")
    lines += ["", h.ratio_table(summaries, ["floor"]), ""]
    for name in ("dagster", "redis"):
        if by.get(name) and by[name].last.get("steps"):
            steps = by[name].last["steps"]
            lines.append(
                f"{name} steps (last run: {len(steps)} steps, {by[name].last.get('step_processes')} step processes; "
                f"{sum(steps.values()):.2f}s in all): "
                + ", ".join(f"{k} {v:.2f}s" for k, v in steps.items())
            )
    if by.get("load") and by.get("dagster"):
        rest = statistics.median(r.wall_s for r in by["dagster"].runs) - by["load"].wall_s
        lines.append(f"dagster beyond loading the code location: {rest:.2f}s (CLI, instance, run, events, the work)")
    if not args.no_profile and s.wants("dagster"):
        lines += ["", *slowest_imports({**s.env, **pg_env}), ""]
        lines += profile_run(s, backup, {**s.env, **pg_env})
    checks = fixed_cost_checks(by, "dagster", "floor") + fixed_cost_checks(by, "redis", "redis-floor")
    checks += [h.rss_check(by[n], 300) for n in ("dagster", "redis") if n in by]
    result = h.OUT / f"fixed-cost-{h.size_label(args.size_gb)}{args.tag}.json"
    return s.finish(lines, summaries, checks, result, database=info)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
