"""Quick start on embedded defaults: create the demo database if absent, then, in the local Dagster instance,
back up every class of the default sources once with all their checks (PostgreSQL daily backup, Redis
snapshot, investigations JSON export, agent_instances CSV export), run both restore drills and the health
report, and print what was made. Exit code 0 means every run succeeded, every check passed and every
configured class of the health report is green.

    python -m cidadao_backup_dagster.quickstart [--database-url URL] [--redis-url URL] [--partition YYYY-MM-DD]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEMO_URL = "postgresql://postgres@127.0.0.1:5432/cidadao_demo"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
LOCAL_INSTANCE = Path(__file__).resolve().parents[1] / "deploy" / "local"
# The strategy's redis.conf; the embedded-default local Redis is set to it when it is not (CONFIG SET only).
STRATEGY_PERSISTENCE = {"appendonly": "yes", "appendfsync": "everysec", "save": "900 1 300 10 60 10000"}

# (job, partition): None = the job's newest complete partition (hour, week, month), "day" = --partition.
STEPS = [
    ("postgres_daily_backup_job", "day"),
    ("redis_snapshot_job", None),
    ("investigations_json_export_job", "day"),
    ("agent_instances_csv_export_job", None),
    ("postgres_restore_drill_job", None),
    ("redis_restore_drill_job", None),
    ("backup_health_report_job", None),
]
SHOWN_METADATA = (
    "storage_uri", "stored_bytes", "rows", "keys", "records", "source_rows", "duration_s", "proved_backup",
)  # fmt: skip


def prepare_local_redis(url: str) -> list[str]:
    """Make the local Redis persist as the strategy says (its persistence checks judge the live server) and
    give it a few demo keys. Returns what was changed, to print."""
    from .core.redis.backup import RedisEndpoint
    from .core.redis.health import last_save_verdict, persistence_config_verdict, read_persistence
    from .demo import seed_redis

    endpoint = RedisEndpoint.from_url(url, "--redis-url")
    changed = []
    client = endpoint.client()
    try:
        if not persistence_config_verdict(read_persistence(endpoint)).passed:
            for name, value in STRATEGY_PERSISTENCE.items():
                client.config_set(name, value)
            changed.append(
                "set the strategy's persistence with CONFIG SET (not written to redis.conf): "
                + ", ".join(f"{k} {v}" for k, v in STRATEGY_PERSISTENCE.items())
            )
        if added := seed_redis(client):
            changed.append(f"added {added} demo keys")
        if not last_save_verdict(read_persistence(endpoint).info, datetime.now(UTC)).passed:
            before = int(client.lastsave().timestamp())
            client.bgsave()
            deadline = datetime.now(UTC) + timedelta(seconds=60)
            while int(client.lastsave().timestamp()) == before and datetime.now(UTC) < deadline:
                time.sleep(0.2)  # BGSAVE runs in a fork; LASTSAVE moves when it is done
            changed.append("ran BGSAVE (unsaved changes on a server that had never saved)")
    finally:
        client.close()
    return changed


def redis_display(url: str) -> str:
    from .core.redis.backup import RedisEndpoint

    return RedisEndpoint.from_url(url, "--redis-url").display()


def _summary(result) -> list[str]:
    lines = []
    for event in result.get_asset_materialization_events():
        meta = event.step_materialization_data.materialization.metadata
        shown = [
            f"{key}={meta[key].value:,}" if isinstance(meta[key].value, int) else f"{key}={meta[key].value}"
            for key in SHOWN_METADATA
            if key in meta
        ]
        partition = event.step_materialization_data.materialization.partition
        lines.append(
            f"  {event.asset_key.to_user_string()}{f' [{partition}]' if partition else ''}: {', '.join(shown)}"
        )
    return lines


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEMO_URL, help=f"demo database to create/back up ({DEMO_URL})")
    parser.add_argument(
        "--redis-url",
        default=os.getenv("REDIS_URL") or LOCAL_REDIS_URL,
        help=f"Redis to snapshot (REDIS_URL, else {LOCAL_REDIS_URL}: that one is set to the strategy's persistence "
        "and given demo keys; another is only read)",
    )
    parser.add_argument("--partition", help="daily partition to back up and export (default: yesterday, UTC)")
    return parser.parse_args(argv)


def _prepare(args: argparse.Namespace):
    """The demo database (created and seeded) and the local Redis; the database's connection, or None after
    saying on stderr what is wrong."""
    from .core.errors import BackupError, ConfigurationError
    from .core.postgres.client import PgConnection
    from .demo import ensure_database, seed

    try:
        target = PgConnection.from_url(args.database_url, "--database-url")
        created = ensure_database(target.with_dbname("postgres"), target.dbname)
        counts = seed(target)
        print(f"Demo database {target.display()} {'created' if created else 'already there'}: {counts}")
        if args.redis_url == LOCAL_REDIS_URL:
            for change in prepare_local_redis(args.redis_url):
                print(f"Local Redis {LOCAL_REDIS_URL}: {change}")
    except (BackupError, ConfigurationError) as exc:
        print(f"quickstart: {exc}", file=sys.stderr)
        return None
    except Exception as exc:  # noqa: BLE001 - e.g. Redis not running: say which and how to fix, no traceback
        print(f"quickstart: {type(exc).__name__}: {exc} (is Redis running? ./setup.sh starts it)", file=sys.stderr)
        return None
    return target


def _report_run(name: str, partition: str | None, result) -> bool:
    """Print one run's outcome, what it made and its checks; True when it succeeded and every check passed."""
    print(f"\n{name}{f' [{partition}]' if partition else ''}: run {result.run_id} "
          f"{'succeeded' if result.success else 'FAILED'}")  # fmt: skip
    green = result.success
    print("\n".join(_summary(result)))
    for evaluation in result.get_asset_check_evaluations():
        state = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        green &= evaluation.passed
        print(f"    check {evaluation.check_name:<25} {state}: {evaluation.description}")
    for event in result.all_events:
        if event.is_step_failure:
            print(f"    step failed: {event.step_key}: {event.event_specific_data.error.message.strip()}")
    return green


def _run_steps(defs, day: str):
    """Run every step in the local instance (else an ephemeral one): (all green, the health report's
    materialization or None)."""
    import dagster as dg

    green, report = True, None
    instance = dg.DagsterInstance.get() if os.getenv("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    with instance:
        for name, partition in STEPS:
            job = defs.resolve_job_def(name)
            if partition == "day":
                partition = day
            elif job.partitions_def is not None:
                partition = job.partitions_def.get_last_partition_key()
            result = job.execute_in_process(
                partition_key=partition,
                instance=instance,
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            green &= _report_run(name, partition, result)
            if name == "backup_health_report_job" and result.success:
                (report,) = result.get_asset_materialization_events()
    return green, report


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    target = _prepare(args)
    if target is None:
        return 2

    # Embedded defaults: the demo sources, the default local folder (unless BACKUP_STORAGE_URL is set), and no
    # expected-size range (the strategy's 500 MB-2 GB would flag a small demo database).
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["REDIS_URL"] = args.redis_url
    os.environ.setdefault("BACKUP_EXPECTED_SIZE_MB", "off")
    if not os.getenv("DAGSTER_HOME") and LOCAL_INSTANCE.is_dir():
        os.environ["DAGSTER_HOME"] = str(LOCAL_INSTANCE)  # so `dagster dev` shows these runs later

    from .definitions import build_defs

    day = args.partition or (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    green, report = _run_steps(build_defs(), day)
    if report is not None:
        meta = report.step_materialization_data.materialization.metadata
        print("\n" + meta["report"].value)
        green &= meta["classes_with_findings"].value == 0
    else:
        green = False
    print(f"\n{'Everything is green.' if green else 'NOT GREEN: see the failures above.'}")
    if os.getenv("DAGSTER_HOME"):
        print(
            f"Browse it: DAGSTER_HOME={os.environ['DAGSTER_HOME']} DATABASE_URL={target.display()} "
            f"REDIS_URL={redis_display(args.redis_url)} .venv/bin/dagster dev -w workspace.yaml"
        )
    return 0 if green else 1


if __name__ == "__main__":
    sys.exit(main())
