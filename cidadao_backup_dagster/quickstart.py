"""Quick start on embedded defaults: create the demo database if absent, back it up into the default
local storage with every check, and print what was made.

    python -m cidadao_backup_dagster.quickstart [--database-url URL] [--partition YYYY-MM-DD]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEMO_URL = "postgresql://postgres@127.0.0.1:5432/cidadao_demo"
LOCAL_INSTANCE = Path(__file__).resolve().parents[1] / "deploy" / "local"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEMO_URL, help=f"demo database to create/back up ({DEMO_URL})")
    parser.add_argument("--partition", help="daily partition to back up (default: yesterday, UTC)")
    args = parser.parse_args(argv)

    from .core.errors import BackupError, ConfigurationError
    from .core.postgres.client import PgConnection
    from .demo import ensure_database, seed

    try:
        target = PgConnection.from_url(args.database_url, "--database-url")
        created = ensure_database(target.with_dbname("postgres"), target.dbname)
        counts = seed(target)
    except (BackupError, ConfigurationError) as exc:
        print(f"quickstart: {exc}", file=sys.stderr)
        return 2
    print(f"Demo database {target.display()} {'created' if created else 'already there'}: {counts}")

    # Embedded defaults: the demo source, the default local folder (unless BACKUP_STORAGE_URL is set), and no
    # expected-size range (the strategy's 500 MB-2 GB would flag a small demo database).
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("BACKUP_EXPECTED_SIZE_MB", "off")
    if not os.getenv("DAGSTER_HOME") and LOCAL_INSTANCE.is_dir():
        os.environ["DAGSTER_HOME"] = str(LOCAL_INSTANCE)  # so `dagster dev` shows this run later

    import dagster as dg

    from .definitions import build_defs

    partition = args.partition or (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    instance = dg.DagsterInstance.get() if os.getenv("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    with instance:
        result = (
            build_defs()
            .resolve_job_def("postgres_daily_backup_job")
            .execute_in_process(
                partition_key=partition,
                instance=instance,
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
            )
        )
    print(f"\nDagster run {result.run_id} ({'succeeded' if result.success else 'FAILED'}), partition {partition}")
    for event in result.get_asset_materialization_events():
        meta = event.step_materialization_data.materialization.metadata
        print(f"  backup:   {meta['storage_uri'].value}")
        print(
            f"            {meta['stored_bytes'].value:,} bytes stored, {meta['raw_bytes'].value:,} raw, "
            f"{meta['tables'].value} tables, {meta['rows'].value:,} rows, {meta['duration_s'].value:.2f} s"
        )
        manifest_uri = meta["storage_uri"].value.rsplit("/", 1)[0] + "/manifest.json"
        print(f"  manifest: {manifest_uri}")
        print(f"  rows:     {json.dumps(meta['row_counts'].value)}")
    failed_error = False
    for evaluation in result.get_asset_check_evaluations():
        state = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        failed_error |= not evaluation.passed and evaluation.severity.value == "ERROR"
        print(f"  check {evaluation.check_name:<15} {state}: {evaluation.description}")
    for event in result.all_events:
        if event.is_step_failure:
            print(f"  step failed: {event.step_key}: {event.event_specific_data.error.message.strip()}")
    if os.getenv("DAGSTER_HOME"):
        print(f"\nBrowse it: DAGSTER_HOME={os.environ['DAGSTER_HOME']} dagster dev -w workspace.yaml")
    return 0 if result.success and not failed_error else 1


if __name__ == "__main__":
    sys.exit(main())
